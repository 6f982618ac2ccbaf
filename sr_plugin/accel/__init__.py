"""`sr_plugin.accelerate`: TeaCache, CFG-aware PAB, First Block Cache and regional compile on both transformers.

Works with or without the switch, in either order relative to `sr_plugin.apply`: the large transformer gets
the accelerations now, the small one as soon as it joins the pipeline's call tracker (the switch never calls
in here; the tracker announces its models) (each with its own state and, for
TeaCache, its own coefficients); `remove` on either handle takes back exactly what it added.
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapters import FamilyAdapter, adapter_for
from ..instance.events import CallListener
from ..instance.patching import drop_hook_residue
from ..pipeline.calls import CallTracker, models_in_play
from ..pipeline.trace import StepRecord
from .compile import CompileConfig  # each acceleration's module registers it (registry.register_acceleration)
from .fbcache import FirstBlockCacheConfig
from .pab import PABConfig
from .registry import Acceleration, from_arguments, register_acceleration, registered
from .teacache import TeaCacheConfig
from .teacache_fit import TeaCacheFit, fit_rescale, fit_teacache

#: Attribute on the pipeline instance pointing at its Accelerations.
ACCEL_ATTR = "_sr_plugin_accel"


class Accelerations(CallListener):
    """The accelerations of one pipeline (`registry.registered()`, as asked for): attached to each model in play
    ("large", and "small" once the switch brings it), reset at every call by the tracker."""

    def __init__(self, pipe: Any, adapter: FamilyAdapter, kinds: dict[str, Acceleration]) -> None:
        self.pipe = pipe
        self.adapter = adapter
        self.kinds = kinds
        self.tracker: CallTracker | None = None  # set by `install`, once every check has passed
        self.models: dict[str, torch.nn.Module] = {}
        #: Per step of the last call, as the tracker records it (`CallTracker.records`).
        self.trace: list[StepRecord] = []

    @property
    def calls(self) -> CallTracker:
        """The pipeline's call tracker (once installed)."""
        assert self.tracker is not None, "install() first"
        return self.tracker

    @property
    def configs(self) -> dict[str, Any]:
        """What was asked for: each acceleration's config, by keyword."""
        return {keyword: kind.config for keyword, kind in self.kinds.items()}

    @property
    def caches(self) -> bool:
        """Whether any of them reuses cached activations."""
        return any(kind.caches for kind in self.kinds.values())

    # ------------------------------------------------------------------ per model
    def check(self, model: torch.nn.Module, role: str) -> None:
        """Every error this model would raise, before anything is changed."""
        for kind in self.kinds.values():
            kind.check(self, model, role)
        owner = _accelerated_by(model)
        if owner is not None and owner is not self:
            raise ValueError(
                f"the {role} transformer already carries sr_plugin accelerations of another pipeline "
                f"(a {type(owner.pipe).__name__}); remove that pipeline's accelerate handle first, or "
                "give this pipeline its own copy of the model"
            )

    def install(self) -> None:
        """Join the pipeline's call tracker (after every check passed: a failed check changes nothing)."""
        self.tracker = CallTracker.of(self.pipe)
        self.tracker.add(self, first=True)
        object.__setattr__(self.pipe, ACCEL_ATTR, self)

    def attach(self, model: torch.nn.Module, role: str) -> None:
        """Apply every requested acceleration to ``model``, all or nothing, in the table's order."""
        self.check(model, role)
        self.models[role] = model
        model.__dict__[_OWNER_ATTR] = self
        self.calls.models.track(model)
        try:
            for kind in self.kinds.values():
                kind.attach(self, model, role)
        except BaseException:
            self.detach(role)
            raise

    def detach(self, role: str) -> None:
        model = self.models.pop(role, None)
        if model is None:
            return
        self.calls.models.untrack(model)
        for kind in reversed(list(self.kinds.values())):
            kind.detach(self, model, role)
        drop_hook_residue(model)
        if model.__dict__.get(_OWNER_ATTR) is self:
            del model.__dict__[_OWNER_ATTR]

    # ------------------------------------------------------------------ models joining and leaving (the tracker)
    def check_model(self, model: torch.nn.Module, role: str) -> None:
        self.check(model, role)

    def model_joined(self, model: torch.nn.Module, role: str) -> None:
        self.attach(model, role)

    def model_left(self, model: torch.nn.Module, role: str) -> None:
        self.detach(role)

    # ------------------------------------------------------------------ per call (the tracker gives every tracked
    # model fresh cache state, and group-wide decisions, at each call's start)
    def end(self, calls: CallTracker) -> None:
        self.trace = calls.records()


class AccelHandle:
    """Returned by `accelerate`; `remove` takes every acceleration off both transformers."""

    def __init__(self, accel: Accelerations) -> None:
        self._accel = accel
        self.removed = False

    @property
    def trace(self) -> list[StepRecord]:
        """Per step of the last call, the same records as the switch's `handle.trace` (without its metric):
        which model ran the step, and per branch whether its blocks were computed or skipped (TeaCache, First
        Block Cache) and its attention computed or reused (PAB)."""
        return list(self._accel.trace)

    def remove(self) -> None:
        if self.removed:
            return
        accel = self._accel
        if accel.calls.active:
            raise RuntimeError("sr_plugin: cannot remove accelerations while the pipeline is running")
        for role in list(accel.models):
            accel.detach(role)
        accel.calls.discard(accel)
        accel.pipe.__dict__.pop(ACCEL_ATTR, None)
        self.removed = True

    def __repr__(self) -> str:
        if self.removed:
            return f"AccelHandle({type(self._accel.pipe).__name__}, removed)"
        kinds = ", ".join(f"{keyword}={config!r}" for keyword, config in self._accel.configs.items())
        return (
            f"AccelHandle({type(self._accel.pipe).__name__}, {kinds}, on {', '.join(self._accel.models) or 'no model'})"
        )


def accelerate(pipe: Any, *configs: Any, **accelerations: Any) -> AccelHandle:
    """Stack accelerations on the pipeline's transformer and, with the switch, on the small one too.

    Typed configs: ``accelerate(pipe, TeaCacheConfig(0.1), PABConfig(), CompileConfig())``, diffusers'
    ``FirstBlockCacheConfig(threshold=0.1)`` for First Block Cache. Or keywords, as a shorthand (a value of None or
    False leaves one off):
        teacache: a threshold (coefficients chosen by each model's config) or a `TeaCacheConfig`.
        pab: True for CFG-aware Pyramid Attention Broadcast with defaults (self-attention every 2nd call in
            timesteps (100, 800)), or a `PABConfig`. Its timestep source is the pipeline's call tracker.
        fbcache: threshold of diffusers' First Block Cache (`FirstBlockCacheConfig`), on each model.
        compile: True for regional torch.compile of the blocks (fullgraph, static shapes), or a dict of
            `torch.compile` options; False or None for none (anything else is an error). The first call compiles
            (a warm-up); later calls, switching or not, do not recompile.
    All checks run before anything changes. Returns a handle whose `remove` undoes all of it.
    """
    adapter = adapter_for(pipe)
    if pipe.__dict__.get(ACCEL_ATTR) is not None:
        raise RuntimeError("sr_plugin.accelerate was already called on this pipeline; remove its handle first")
    if getattr(pipe, "transformer", None) is None:
        raise ValueError(f"this {type(pipe).__name__} has no transformer to accelerate")
    accel = Accelerations(pipe, adapter, from_arguments(configs, accelerations))
    models = models_in_play(pipe)  # "large", and "small" once the switch is applied
    for role, model in models.items():
        accel.check(model, role)
    accel.install()
    handle = AccelHandle(accel)
    try:
        for role, model in models.items():
            accel.attach(model, role)
    except BaseException:
        handle.remove()  # all or nothing: what attached comes off, the tracker forgets it
        raise
    return handle


#: Marks a model carrying accelerations (its hooks keep per-model state): the Accelerations that put them.
_OWNER_ATTR = "_sr_plugin_accelerated_by"


def _accelerated_by(model: torch.nn.Module) -> Accelerations | None:
    return model.__dict__.get(_OWNER_ATTR)


def accelerations_of(pipe: Any) -> Accelerations | None:
    return pipe.__dict__.get(ACCEL_ATTR)


__all__ = [
    "AccelHandle",
    "Acceleration",
    "CompileConfig",
    "FirstBlockCacheConfig",
    "PABConfig",
    "TeaCacheFit",
    "TeaCacheConfig",
    "accelerate",
    "accelerations_of",
    "register_acceleration",
    "registered",
    "fit_teacache",
    "fit_rescale",
]
