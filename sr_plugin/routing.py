"""The per-pipeline controller of the switch.

It rides on three things diffusers pipelines already do, all patched on instances only:

- ``with self.progress_bar(total=...)`` brackets exactly the denoising loop of every call, and its
  ``__exit__`` runs on success, interruption and error alike: the call's state is set up and torn down there;
- ``self.scheduler.step(guided_output, t, sample)`` runs once per step with the guided model output
  (after CFG, with the scale that step really used): the switching metric is observed there;
- the loop reads ``self.transformer`` afresh at every step: between steps, the small model is put there.

So a switch always falls on a step boundary, whatever the number of transformer calls per step.
"""

from __future__ import annotations

import functools
import inspect
import sys
import uuid
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry

from .adapters import FamilyAdapter, Handoff
from .handoff_hook import HandoffHook
from .metric import relative_change
from .patching import InstancePatches
from .policy import SwitchOptions, SwitchPolicy, second_differences
from .trace import StepRecord


def _identity(value: torch.Tensor) -> torch.Tensor:
    return value


class Router:
    """Owns one pipeline's switching: per-call state, the step observer and the transformer swap."""

    def __init__(
        self,
        pipe: Any,
        small: torch.nn.Module,
        adapter: FamilyAdapter,
        handoff: Handoff,
        options: SwitchOptions,
        small_device: torch.device | None = None,
        agree: Callable[[torch.Tensor], torch.Tensor] = _identity,
    ) -> None:
        self.pipe = pipe
        self.small = small
        self.adapter = adapter
        self.handoff = handoff
        self.options = options
        self.small_device = small_device
        #: Makes every rank see the same metric (identity on one process); see sr_plugin.distributed.
        self.agree = agree
        self.hook_name = f"sr_plugin_handoff_{uuid.uuid4().hex[:8]}"
        self.trace: list[StepRecord] = []
        self.switch_step: int | None = None
        self._checked_large: torch.nn.Module | None = pipe.transformer
        self._active = False
        self._patches = InstancePatches()
        self._hooked: torch.nn.Module | None = None

    # ------------------------------------------------------------------ call bracket
    def begin(self, bar: Any) -> None:
        """Start of the denoising loop of one call: fresh state, everything checked before any step runs."""
        if self._active:
            raise RuntimeError("sr_plugin: a pipeline call is already in progress on this pipeline")
        pipe = self.pipe
        large = pipe.transformer
        if large is None:
            raise ValueError("the pipeline has no transformer")
        if large is not self._checked_large:
            self.adapter.check_pair(large, self.small)
            self._checked_large = large
        scheduler = pipe.scheduler
        if getattr(scheduler, "order", 1) != 1:
            raise ValueError(
                f"{type(scheduler).__name__} has order {scheduler.order}: it calls the model more than once per "
                "step, and the switch is defined on steps. Use a first-order scheduler."
            )
        self.adapter.check_scheduler(scheduler)
        self.timesteps = [float(t) for t in scheduler.timesteps.tolist()]
        self.policy = SwitchPolicy(self.options.resolve(len(self.timesteps)))
        self.handoff.begin_call(pipe)
        self.large, self._scheduler, self._bar = large, scheduler, bar
        self._step, self._prev_x0, self._d = 0, None, []
        self._active = True
        try:
            self._observe_steps(scheduler)
            self._show("large")
            if self.policy.use_small(0):
                self._swap()
        except BaseException:
            self.end()
            raise

    def end(self) -> None:
        """End of the loop (also on error or interrupt): put the pipeline back, then write the trace."""
        if not self._active:
            return
        self._active = False
        try:
            self._patches.undo()
            if self._hooked is not None:
                HookRegistry.check_if_exists_or_initialize(self._hooked).remove_hook(self.hook_name, recurse=False)
                self._hooked = None
        finally:
            self._write_trace()

    # ------------------------------------------------------------------ per step
    def _observe_steps(self, scheduler: Any) -> None:
        original = scheduler.step
        # Arguments are read by the scheduler class's own parameter names, which is how pipelines call it
        # (an earlier instance-level wrapper may show another signature).
        cls_signature = inspect.signature(type(scheduler).step)
        signature = cls_signature.replace(parameters=list(cls_signature.parameters.values())[1:])

        # functools.wraps keeps `__wrapped__`, so inspect.signature(scheduler.step) still shows the original
        # parameters: pipelines pass `generator`/`eta` only if the signature names them.
        @functools.wraps(original)
        def step(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            bound = signature.bind(*args, **kwargs).arguments
            self.after_step(bound["model_output"], bound["sample"])
            return out

        self._patches.set(scheduler, "step", step)

    def after_step(self, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        """Observe step j's guided output, then decide who runs step j + 1."""
        j = self._step
        if j >= len(self.timesteps):
            return
        x0 = self.adapter.denoised(self._scheduler, j, self.timesteps[j], sample, model_output)
        d = None if self._prev_x0 is None else self.agree(relative_change(x0, self._prev_x0))
        self._d.append(d)
        # The one host read per step, and only while the decision still depends on it.
        self.policy.observe(j, float(d) if d is not None and self.policy.needs_metric() else None)
        self._prev_x0 = x0
        self._step = j + 1
        if self._hooked is None and self._step < len(self.timesteps) and self.policy.use_small(self._step):
            self._swap()

    def _swap(self) -> None:
        """Hand over: the small model takes the large one's place in the pipeline for the rest of the call."""
        HookRegistry.check_if_exists_or_initialize(self.small).register_hook(
            HandoffHook(self.handoff, self.small_device), self.hook_name
        )
        self._hooked = self.small
        self._patches.set(self.pipe, "transformer", self.small)
        self._show("small")

    def _show(self, model: str) -> None:
        set_postfix = getattr(self._bar, "set_postfix_str", None)
        if set_postfix is not None:
            set_postfix(f"sr: {model} transformer")

    def _write_trace(self) -> None:
        present = [v for v in self._d if v is not None]
        values = iter(torch.stack(present).tolist() if present else [])  # one host read for the whole call
        d = [None if v is None else next(values) for v in self._d]
        s = second_differences(d)
        switch = self.policy.switch_step
        self.switch_step = switch if switch is not None and switch < len(d) else None
        self.trace = [
            StepRecord(
                index=j,
                timestep=self.timesteps[j],
                model="small" if self.switch_step is not None and j >= self.switch_step else "large",
                d=d[j],
                s=s[j],
            )
            for j in range(len(d))
        ]


class RoutedProgressBar:
    """Wraps the pipeline's progress bar so that its context brackets the router's call state."""

    def __init__(self, bar: Any, router: Router) -> None:
        self._bar = bar
        self._router = router

    def __enter__(self) -> Any:
        bar = self._bar.__enter__()
        try:
            self._router.begin(bar)
        except BaseException:
            self._bar.__exit__(*sys.exc_info())
            raise
        return bar

    def __exit__(self, *exc: Any) -> Any:
        try:
            self._router.end()
        except BaseException:
            self._bar.__exit__(*exc)
            raise
        return self._bar.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)
