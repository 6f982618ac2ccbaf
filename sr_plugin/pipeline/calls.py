"""Per-pipeline call tracking, shared by the switch and the accelerations.

It rides on two things diffusers pipelines already do, patched on the instance only:

- ``with self.progress_bar(total=...)`` brackets exactly the denoising loop of every call, and its
  ``__exit__`` runs on success, interruption and error alike: each call's state is set up and torn down there;
- ``self.scheduler.step(guided_output, t, sample)`` runs once per step with the guided model output (after
  CFG, with the scale that step really used): the step counter advances there, and listeners observe it.

Listeners (the router of the switch, the caching accelerations) get ``begin``, ``after_step`` and ``end``.

It is also where the switch and the accelerations meet without knowing each other: the models in play by role
(``"large"`` is ``pipe.transformer``; the switch brings ``"small"``), announced to the listeners as they join
and leave (``check_model`` before anything changes, ``model_joined``, ``model_left``).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import torch

from ..integrations.distributed import ContextParallelCall, identity
from ..integrations.hook_state import FreshHookState
from ..instance.arguments import binder
from ..instance.patching import InstancePatches
from .trace import StepRecord


class CallListener:
    """What the tracker tells the switch and the accelerations. Every method is a no-op here: a listener writes
    the ones it needs.

    Per call: ``begin`` (after the pipeline set its timesteps), ``prepare`` (once every listener began, and may
    have added caches: the models in play set up for the call), ``after_step`` (the guided output and sample of
    each step), ``step_ended`` (after the step's callback), ``end``. Per model in play: ``check_model`` (every
    error before anything changes), ``model_joined``, ``model_left``."""

    def begin(self, calls: "CallTracker") -> None:
        pass

    def prepare(self, calls: "CallTracker") -> None:
        pass

    def after_step(self, calls: "CallTracker", model_output: torch.Tensor, sample: torch.Tensor) -> None:
        pass

    def step_ended(self, calls: "CallTracker") -> None:
        pass

    def end(self, calls: "CallTracker") -> None:
        pass

    def check_model(self, model: torch.nn.Module, role: str) -> None:
        pass

    def model_joined(self, model: torch.nn.Module, role: str) -> None:
        pass

    def model_left(self, model: torch.nn.Module, role: str) -> None:
        pass


def models_in_play(pipe: Any) -> dict[str, torch.nn.Module]:
    """The pipeline's models by role, without installing anything: ``{"large": pipe.transformer, ...}``."""
    tracker = CallTracker.existing(pipe)
    return {"large": pipe.transformer, **(tracker.roles if tracker is not None else {})}


class CallTracker:
    """Brackets every call of one pipeline instance and counts its steps. Get it with `CallTracker.of(pipe)`."""

    ATTR = "_sr_plugin_calls"

    @classmethod
    def existing(cls, pipe: Any) -> "CallTracker | None":
        """The pipeline's tracker if one is installed (looking changes nothing)."""
        return pipe.__dict__.get(cls.ATTR)

    @classmethod
    def of(cls, pipe: Any) -> "CallTracker":
        tracker = pipe.__dict__.get(cls.ATTR)
        if tracker is None:
            tracker = cls(pipe)
        return tracker

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.listeners: list[CallListener] = []
        self.active = False
        self.timesteps: list[float] = []
        self.step = 0
        #: The role whose model runs the steps from now on ("large" until the switch says "small").
        self.running = "large"
        #: Per step of the current/last call: the role that ran it.
        self.ran: list[str] = []
        #: Per step of the current/last call, what listeners noted for the trace: {field: {(role, branch): value}},
        #: a field being a `StepRecord` field ("cache", "attention"); the tracker does not read the values.
        self.notes: list[dict[str, dict[tuple[str, str], Any]]] = []
        #: How a field's noted value reads in the trace (set by the listener that notes it), by field.
        self.renderers: dict[str, Callable[[Any], Any]] = {}
        #: Makes every rank of a context-parallel group use the same value (identity on one process), and that group
        #: (None on one process): set for each call by `ContextParallelCall`.
        self.agree: Callable[[torch.Tensor], torch.Tensor] = identity
        self.group: Any = None
        #: What every call gets before the added listeners, from the rooms that own it: the context-parallel
        #: group's agreement, and fresh cache state in every model in play.
        self._standard: list[CallListener] = [ContextParallelCall(), FreshHookState()]
        #: Models whose caches this tracker manages besides pipe.transformer (the small model, ...), counted.
        self._tracked: dict[int, list[Any]] = {}
        #: Models in play besides pipe.transformer ("large"), by role: the switch's small model is "small".
        self.roles: dict[str, torch.nn.Module] = {}
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
        self.listeners.insert(0, listener) if first else self.listeners.append(listener)

    def discard(self, listener: CallListener) -> None:
        """Forget a listener; the last one out restores the pipeline's progress bar."""
        if self.active:
            raise RuntimeError("sr_plugin: cannot change a pipeline while it is running")
        if listener in self.listeners:
            self.listeners.remove(listener)
        if not self.listeners:
            self._install.undo()

    # ------------------------------------------------------------------ models in play, by role
    def check_join(self, role: str, model: torch.nn.Module) -> None:
        """Every error a listener would raise for ``model`` joining as ``role``, before anything changes."""
        for listener in list(self.listeners):
            listener.check_model(model, role)

    def join(self, role: str, model: torch.nn.Module) -> None:
        if self.active:
            raise RuntimeError("sr_plugin: cannot change a pipeline while it is running")
        if role in self.roles or role == "large":
            raise ValueError(f"a {role} model is already in play on this pipeline")
        self.roles[role] = model
        done: list[Any] = []
        try:
            for listener in list(self.listeners):
                listener.model_joined(model, role)  # all or nothing on its side (it undoes its own part on failure)
                done.append(listener)
        except BaseException:
            for listener in reversed(done):
                listener.model_left(model, role)
            del self.roles[role]
            raise

    def leave(self, role: str) -> None:
        if self.active:
            raise RuntimeError("sr_plugin: cannot change a pipeline while it is running")
        model = self.roles.pop(role, None)
        if model is None:
            return
        for listener in reversed(self.listeners):
            listener.model_left(model, role)

    def track(self, model: torch.nn.Module) -> None:
        """Manage ``model``'s caches per call (fresh at the start, released at the end), as diffusers does for
        the pipeline's own components only."""
        entry = self._tracked.setdefault(id(model), [model, 0])
        entry[1] += 1

    def untrack(self, model: torch.nn.Module) -> None:
        entry = self._tracked.get(id(model))
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._tracked[id(model)]

    def _models(self, first: torch.nn.Module | None) -> list[torch.nn.Module]:
        models = [] if first is None else [first]
        return models + [m for m, _ in self._tracked.values() if all(m is not x for x in models)]

    @property
    def in_play(self) -> list[torch.nn.Module]:
        """The models of the running call: ``pipe.transformer`` and every tracked one (the small model, ...)."""
        return list(self._in_play)

    def blocks(self, model: torch.nn.Module) -> Any:
        """``model``'s transformer blocks, by the pipeline's family."""
        from ..adapters import adapter_for

        return adapter_for(self.pipe).blocks(model)

    def _all(self) -> list[CallListener]:
        return self._standard + list(self.listeners)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def current_timestep(self) -> float | None:
        """The timestep of the step now running, as a host float (no device read)."""
        return self.timesteps[self.step] if self.active and self.step < len(self.timesteps) else None

    def note(self, field: str, role: str, branch: str, value: Any,
             merge: Callable[[Any, Any], Any] | None = None) -> None:
        """Note ``value`` for the step now running (``merge(old, new)`` when one was noted already)."""
        if self.active and self.step < len(self.timesteps):
            while len(self.notes) <= self.step:
                self.notes.append({})
            noted = self.notes[self.step].setdefault(field, {})
            key = (role, branch)
            noted[key] = merge(noted[key], value) if merge is not None and key in noted else value

    def notes_at(self, step: int, field: str) -> dict[tuple[str, str], Any]:
        """What was noted for ``field`` at one step, per (role, branch), as the trace shows it."""
        noted = self.notes[step].get(field, {}) if step < len(self.notes) else {}
        render = self.renderers.get(field)
        return {key: render(value) for key, value in noted.items()} if render is not None else dict(noted)

    def records(self, d: list[float | None] | None = None, s: list[float | None] | None = None) -> list[StepRecord]:
        """The last call as one `StepRecord` per step (the one trace type of both handles): which role ran it,
        and that model's cache and attention decisions by branch. ``d``/``s`` are the switch's metric, if any."""
        out = []
        for j, role in enumerate(self.ran):
            out.append(StepRecord(
                index=j, timestep=self.timesteps[j], model=role,
                d=d[j] if d is not None and j < len(d) else None, s=s[j] if s is not None and j < len(s) else None,
                cache={b: what for (r, b), what in self.notes_at(j, "cache").items() if r == role},
                attention={b: what for (r, b), what in self.notes_at(j, "attention").items() if r == role}))
        return out

    # ------------------------------------------------------------------ one call
    def begin(self, bar: Any) -> None:
        if self.active:
            raise RuntimeError("sr_plugin: a pipeline call is already in progress on this pipeline")
        scheduler = self.pipe.scheduler
        self.timesteps = [float(t) for t in scheduler.timesteps.tolist()]
        self.step = 0
        self.running = "large"
        self.ran = []
        self.notes = []
        self.bar = bar
        self.active = True
        self._in_play = self._models(self.pipe.transformer)
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
        result = self._entered.update(*args, **kwargs) if hasattr(self, "_entered") else self._bar.update(*args, **kwargs)
        self._tracker.step_ended()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)
