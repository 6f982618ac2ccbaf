"""The models in play on one pipeline, by role: ``"large"`` is ``pipe.transformer``, the switch brings ``"small"``.
Joining and leaving are announced to the call tracker's listeners (``check_model`` before anything changes,
``model_joined``, ``model_left``); the models whose caches the tracker keeps fresh per call are counted by the
rooms that track them."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..instance.events import CallListener


class ModelsInPlay:
    def __init__(self, listeners: Callable[[], list[CallListener]], busy: Callable[[], bool]) -> None:
        self._listeners = listeners
        self._busy = busy
        #: Models in play besides pipe.transformer ("large"), by role.
        self.roles: dict[str, torch.nn.Module] = {}
        #: Models whose caches are kept fresh per call besides pipe.transformer, with how many rooms track each.
        self._tracked: dict[int, tuple[torch.nn.Module, int]] = {}

    def _idle(self) -> None:
        if self._busy():
            raise RuntimeError("sr_plugin: cannot change a pipeline while it is running")

    def check_join(self, role: str, model: torch.nn.Module) -> None:
        """Every error a listener would raise for ``model`` joining as ``role``, before anything changes."""
        for listener in list(self._listeners()):
            listener.check_model(model, role)

    def join(self, role: str, model: torch.nn.Module) -> None:
        self._idle()
        if role in self.roles or role == "large":
            raise ValueError(f"a {role} model is already in play on this pipeline")
        self.roles[role] = model
        done: list[CallListener] = []
        try:
            for listener in list(self._listeners()):
                listener.model_joined(model, role)  # all or nothing on its side (it undoes its own part on failure)
                done.append(listener)
        except BaseException:
            for listener in reversed(done):
                listener.model_left(model, role)
            del self.roles[role]
            raise

    def leave(self, role: str) -> None:
        self._idle()
        model = self.roles.pop(role, None)
        if model is None:
            return
        for listener in reversed(self._listeners()):
            listener.model_left(model, role)

    def track(self, model: torch.nn.Module) -> None:
        """Keep ``model``'s caches fresh per call (at the start and the end), as diffusers does for the pipeline's
        own components only."""
        _, count = self._tracked.get(id(model), (model, 0))
        self._tracked[id(model)] = (model, count + 1)

    def untrack(self, model: torch.nn.Module) -> None:
        entry = self._tracked.get(id(model))
        if entry is not None:
            if entry[1] <= 1:
                del self._tracked[id(model)]
            else:
                self._tracked[id(model)] = (model, entry[1] - 1)

    def for_call(self, large: torch.nn.Module | None) -> list[torch.nn.Module]:
        """The models of a call: ``large`` (``pipe.transformer``) and every tracked one, each once."""
        models = [] if large is None else [large]
        return models + [m for m, _ in self._tracked.values() if all(m is not x for x in models)]
