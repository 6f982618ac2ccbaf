"""Per-pipeline call tracking, shared by the switch and the accelerations: the event bus of one pipeline's calls.

It rides on two things diffusers pipelines already do, patched on the instance only:

- ``with self.progress_bar(total=...)`` brackets exactly the denoising loop of every call, and its
  ``__exit__`` runs on success, interruption and error alike: each call's state is set up and torn down there;
- ``self.scheduler.step(guided_output, t, sample)`` runs once per step with the guided model output (after
  CFG, with the scale that step really used): the step counter advances there, and listeners observe it.

Listeners (`sr_plugin.instance.events.CallListener`: the router of the switch, the caching accelerations, the
calibration's tools) get ``begin``, ``prepare``, ``after_step``, ``step_ended`` and ``end``. The tracker also holds
what is shared between them without their knowing each other: which role's model runs now (`running`, set by the
switch), the models in play by role (`models`, `sr_plugin.pipeline.models`) and what was noted for the trace
(`notes`, `sr_plugin.pipeline.notes`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch

from ..adapters import adapter_for
from ..instance.arguments import binder
from ..instance.events import CallListener
from ..instance.patching import InstancePatches
from ..integrations.distributed import ContextParallelCall, identity
from ..integrations.hook_state import FreshHookState
from .models import ModelsInPlay
from .notes import StepNotes
from .trace import StepRecord

__all__ = ["CallListener", "CallTracker", "check_scheduler_order", "models_in_play"]


def models_in_play(pipe: Any) -> dict[str, torch.nn.Module]:
    """The pipeline's models by role, without installing anything: ``{"large": pipe.transformer, ...}``."""
    tracker = CallTracker.existing(pipe)
    return {"large": pipe.transformer, **(tracker.models.roles if tracker is not None else {})}


class CallTracker:
    """Brackets every call of one pipeline instance and counts its steps. Get it with `CallTracker.of(pipe)`."""

    ATTR = "_sr_plugin_calls"

    @classmethod
    def existing(cls, pipe: Any) -> CallTracker | None:
        """The pipeline's tracker if one is installed (looking changes nothing)."""
        return pipe.__dict__.get(cls.ATTR)

    @classmethod
    def of(cls, pipe: Any) -> CallTracker:
        tracker = pipe.__dict__.get(cls.ATTR)
        if tracker is None:
            tracker = cls(pipe)
        return tracker

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        #: The family's adapter: where the models' blocks are, for the listeners that need them.
        self.adapter = adapter_for(pipe)
        self.listeners: list[CallListener] = []
        self.active = False
        self.timesteps: list[float] = []
        self.step = 0
        #: The role whose model runs the steps from now on ("large" until the switch says otherwise): the one place
        #: this is kept.
        self.running = "large"
        #: Per step of the current/last call: the role that ran it.
        self.ran: list[str] = []
        #: What listeners noted for the trace, per step.
        self.notes = StepNotes()
        #: The models in play by role, and the ones whose caches are kept fresh per call.
        self.models = ModelsInPlay(lambda: self.listeners, lambda: self.active)
        #: Makes every rank of a context-parallel group use the same value (identity on one process), and that group
        #: (None on one process): set for each call by `ContextParallelCall`.
        self.agree: Callable[[torch.Tensor], torch.Tensor] = identity
        self.group: Any = None
        #: What every call gets before the added listeners, from the rooms that own it: the context-parallel
        #: group's agreement, and fresh cache state in every model in play.
        self._standard: list[CallListener] = [ContextParallelCall(), FreshHookState()]
        self._in_play: list[torch.nn.Module] = []
        self.bar: Any = None
        self._install = InstancePatches()
        self._call = InstancePatches()
        original = pipe.progress_bar

        def progress_bar(iterable: Any = None, total: int | None = None) -> Any:
            bar = original(iterable=iterable, total=total)
            return bar if iterable is not None or total is None else _TrackedProgressBar(bar, self)

        self._install.set(pipe, "progress_bar", progress_bar)
        self._install.set(pipe, self.ATTR, self)

    # ------------------------------------------------------------------ listeners
    def add(self, listener: CallListener, first: bool = False) -> None:
        if self.active:
            raise RuntimeError("sr_plugin: cannot change a pipeline while it is running")
        if first:
            self.listeners.insert(0, listener)
        else:
            self.listeners.append(listener)

    def discard(self, listener: CallListener) -> None:
        """Forget a listener; the last one out restores the pipeline's progress bar."""
        if self.active:
            raise RuntimeError("sr_plugin: cannot change a pipeline while it is running")
        if listener in self.listeners:
            self.listeners.remove(listener)
        if not self.listeners:
            self._install.undo()

    @property
    def in_play(self) -> list[torch.nn.Module]:
        """The models of the running call: ``pipe.transformer`` and every tracked one (the small model, ...)."""
        return list(self._in_play)

    def blocks(self, model: torch.nn.Module) -> Any:
        """``model``'s transformer blocks, by the pipeline's family."""
        return self.adapter.blocks(model)

    def _all(self) -> list[CallListener]:
        return self._standard + list(self.listeners)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def current_timestep(self) -> float | None:
        """The timestep of the step now running, as a host float (no device read)."""
        return self.timesteps[self.step] if self.active and self.step < len(self.timesteps) else None

    def records(self, d: list[float | None] | None = None, s: list[float | None] | None = None) -> list[StepRecord]:
        """The last call as one `StepRecord` per step (`StepNotes.records`); ``d``/``s``: the switch's metric."""
        return self.notes.records(self.ran, self.timesteps, d, s)

    # ------------------------------------------------------------------ one call
    def begin(self, bar: Any) -> None:
        if self.active:
            raise RuntimeError("sr_plugin: a pipeline call is already in progress on this pipeline")
        scheduler = self.pipe.scheduler
        self.timesteps = [float(t) for t in scheduler.timesteps.tolist()]
        self.step = 0
        self.running = "large"
        self.ran = []
        self.notes.clear()
        self.notes.step = 0
        self.bar = bar
        self.active = True
        self._in_play = self.models.for_call(self.pipe.transformer)
        started: list[CallListener] = []
        try:
            self._observe_steps(scheduler)
            for listener in self._all():
                listener.begin(self)
                started.append(listener)
            check_scheduler_order(scheduler)  # after the listeners began: a refused call reports no steps
            for listener in self._all():  # the models, once every listener added what it adds to them
                listener.prepare(self)
        except BaseException:
            self._finish(started)
            raise

    def step_ended(self) -> None:
        """The pipeline finished a step, its step-end callback included (its progress bar's update)."""
        if self.active:
            for listener in list(self.listeners):
                listener.step_ended(self)

    def end(self) -> None:
        if self.active:
            self._finish(self._all())

    def _finish(self, listeners: list[CallListener]) -> None:
        self.active = False
        self.notes.step = None
        self._call.undo()
        errors = []
        for listener in reversed(listeners):
            try:
                listener.end(self)
            except BaseException as err:  # every listener must get to restore its state
                errors.append(err)
        self._in_play, self.bar = [], None  # hold no model between calls
        if errors:
            raise errors[0]

    def _observe_steps(self, scheduler: Any) -> None:
        original = scheduler.step
        # Arguments are read by the scheduler class's own parameter names, which is how pipelines call it
        # (an earlier instance-level wrapper may show another signature).
        bind = binder(type(scheduler), "step")

        # functools.wraps keeps `__wrapped__`, so inspect.signature(scheduler.step) still shows the original
        # parameters: pipelines pass `generator`/`eta` only if the signature names them.
        @functools.wraps(original)
        def step(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            bound = bind(args, kwargs)
            if self.step < len(self.timesteps):
                self.ran.append(self.running)
                for listener in self._all():
                    listener.after_step(self, bound["model_output"], bound["sample"])
            self.step += 1
            self.notes.step = self.step if self.step < len(self.timesteps) else None
            return out

        self._call.set(scheduler, "step", step)


def check_scheduler_order(scheduler: Any) -> None:
    """sr_plugin works on steps: a scheduler that calls the model more than once per step is refused."""
    if getattr(scheduler, "order", 1) != 1:
        raise ValueError(
            f"{type(scheduler).__name__} has order {scheduler.order}: it calls the model more than once per "
            "step, and sr_plugin works on steps. Use a first-order scheduler."
        )


class _TrackedProgressBar:
    """The pipeline's progress bar, whose context also brackets the tracker's call state, and whose
    ``update`` (the last thing a step does, after the step-end callback) tells the listeners the step ended."""

    def __init__(self, bar: Any, tracker: CallTracker) -> None:
        self._bar = bar
        self._tracker = tracker

    def __enter__(self) -> Any:
        bar = self._bar.__enter__()
        try:
            self._tracker.begin(bar)
        except BaseException:
            self._bar.__exit__(*sys.exc_info())
            raise
        self._entered = bar
        return self

    def __exit__(self, *exc: Any) -> Any:
        try:
            self._tracker.end()
        except BaseException:
            self._bar.__exit__(*exc)
            raise
        return self._bar.__exit__(*exc)

    def update(self, *args: Any, **kwargs: Any) -> Any:
        result = (
            self._entered.update(*args, **kwargs) if hasattr(self, "_entered") else self._bar.update(*args, **kwargs)
        )
        self._tracker.step_ended()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)
