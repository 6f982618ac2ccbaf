"""The switch itself: observes every step and puts the small transformer in the large one's place.

The pipelines read ``self.transformer`` afresh at every step, so between two steps the small model is put
there for the rest of the call (with a hook that maps its inputs and outputs). A switch therefore always
falls on a step boundary, whatever the number of transformer calls per step.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry

from .. import compat
from ..integrations.user_cache_mirror import UserCacheMirror
from ..adapters import FamilyAdapter, Handoff
from ..pipeline.calls import CallListener, CallTracker, _reset_caches
from ..integrations.distributed import cp_group
from .handoff_hook import HandoffHook
from .metric import relative_change
from ..integrations.offload import model_offload_active
from ..instance.patching import InstancePatches, drop_hook_residue_at
from .policy import SwitchOptions, SwitchPolicy, cap_schedule, decreases
from ..pipeline.trace import StepRecord, SwitchRecord


#: Marks a small model while a call of the pipeline that holds it runs (see `Router._check_small_free`).
_IN_USE = "_sr_plugin_rendering_for"


class Router(CallListener):
    """Owns one pipeline's switching: the step observer, the policy and the transformer swap."""

    def __init__(
        self,
        pipe: Any,
        small: torch.nn.Module,
        adapter: FamilyAdapter,
        handoff: Handoff,
        options: SwitchOptions,
        small_device: torch.device | None = None,
    ) -> None:
        self.pipe = pipe
        self.small = small
        self.adapter = adapter
        self.handoff = handoff
        self.options = options
        self.small_device = small_device
        #: Caches the user enabled on the large model, mirrored onto the small one with their own state.
        self.mirror = UserCacheMirror(small, adapter.block_lists(small))
        #: Factories of context managers entered around every call of the small model.
        self.small_call_contexts: list[Callable[[], Any]] = [self.mirror.small_call_context]
        #: With offload_large: moves the large model's weights off the GPU after the switch.
        self.offloader: Any = None
        self.hook_name = f"sr_plugin_handoff_{uuid.uuid4().hex[:8]}"
        self.trace: list[StepRecord] = []
        self.switch_step: int | None = None
        self.switch: SwitchRecord | None = None
        self.large: torch.nn.Module = pipe.transformer
        self._checked_large: torch.nn.Module | None = pipe.transformer
        self._patches = InstancePatches()
        self._hooked: torch.nn.Module | None = None
        self._swap_pending = False

    # ------------------------------------------------------------------ call bracket
    def begin(self, calls: CallTracker) -> None:
        """Start of the denoising loop: every check first, then fresh per-call state."""
        self.trace, self.switch_step, self.switch = [], None, None  # a call refused here reports no steps
        self._d = []
        self._check_small_free()
        pipe = self.pipe
        large = pipe.transformer
        if large is None:
            raise ValueError("the pipeline has no transformer")
        if large is not self._checked_large:
            self.adapter.check_pair(large, self.small)
            self._checked_large = large
        self.adapter.check_scheduler(pipe.scheduler)
        if calls.group is not None and cp_group(self.small) is None and self.small is not large:
            raise ValueError("the large transformer became context-parallel after sr_plugin.apply: call "
                             "handle.remove() and sr_plugin.apply(...) again, so that the small one is parallelized too")
        schedule = self.options.resolve(calls.num_steps)
        latest = self.adapter.latest_switch_step(pipe, calls.timesteps)
        if latest is not None:
            schedule = cap_schedule(schedule, *latest)
        self.policy = SwitchPolicy(schedule)
        self.handoff.begin_call(pipe)
        self.mirror.sync(large)
        if self.offloader is not None:
            self.offloader.restore()  # already queued when the prompt was encoded; a no-op then
        self.large = large
        self._prev_x0: torch.Tensor | None = None
        self._d: list[torch.Tensor | None] = []
        self._show(calls, "large")
        if self.policy.use_small(0):
            self._swap(calls)
        if self.small is not large:
            vars(self.small)[_IN_USE] = self  # released by `end`, which runs once `begin` has returned

    def after_step(self, calls: CallTracker, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        """Observe step j's guided output, then decide who runs step j + 1."""
        j = calls.step
        x0 = self.adapter.denoised(self.pipe.scheduler, j, calls.timesteps[j], sample, model_output)
        d = None if self._prev_x0 is None else calls.agree(relative_change(x0, self._prev_x0))
        self._d.append(d)
        # The one host read per step, and only while the decision still depends on it.
        self.policy.observe(j, float(d) if d is not None and self.policy.needs_metric() else None)
        self._prev_x0 = x0
        if self._hooked is None and j + 1 < calls.num_steps and self.policy.use_small(j + 1):
            if self.adapter.step_ends_with_progress_update:
                self._swap_pending = True  # after the step-end callback, which must see this step's model
            else:
                self._swap(calls)

    def step_ended(self, calls: CallTracker) -> None:
        if self._swap_pending:
            self._swap_pending = False
            self._swap(calls)

    def end(self, calls: CallTracker) -> None:
        """End of the loop (also on error or interrupt): put the pipeline back, then write the trace."""
        self._swap_pending = False
        if vars(self.small).get(_IN_USE) is self:
            del vars(self.small)[_IN_USE]
        try:
            self._patches.undo()
            if self._hooked is not None:
                self._unhook(self._hooked)
        finally:
            self._hooked = None
            self.mirror.end_call()
            self._write_trace(calls)

    def _check_small_free(self) -> None:
        """One call in flight per small model: the hand-off's per-call state (the hook, CogVideoX's latent
        mapping) lives on the model, so two pipelines sharing it must not run calls at the same time."""
        holder = vars(self.small).get(_IN_USE)
        if holder is not None and holder is not self:
            raise RuntimeError(
                f"the small transformer is in use by a call of another pipeline (a {type(holder.pipe).__name__}) that "
                "is still running: give each pipeline its own small model instance, or run the calls one after another")

    # ------------------------------------------------------------------ the hand-off
    def _swap(self, calls: CallTracker) -> None:
        """The small model takes the large one's place in the pipeline for the rest of the call."""
        small = self.small
        self._had = ("forward" in vars(small), hasattr(small, compat.HOOK_REGISTRY_ATTR))
        HookRegistry.check_if_exists_or_initialize(small).register_hook(
            HandoffHook(self.handoff, self.small_device, self.small_call_contexts), self.hook_name
        )
        self._hooked = self.small
        calls.running = "small"
        self._patches.set(self.pipe, "transformer", self.small)
        for slot in self.adapter.expert_slots(self.pipe):  # e.g. Wan2.2's low-noise expert: the small one renders
            self._patches.set(self.pipe, slot, self.small)
        if self.large is not self.small:
            self.mirror.at_switch(len(self._d), calls.num_steps)  # the first step the small model runs
            _reset_caches(self.large)  # it will not run again in this call: free its cached residuals/attention
        if self.offloader is not None and not model_offload_active(self.pipe):
            self.offloader.offload()  # queued behind the large model's last step; returns at once
        self._show(calls, "small")

    def _unhook(self, model: torch.nn.Module) -> None:
        """Remove the hand-off hook, and what diffusers' registry leaves behind, so that the small model is
        exactly as before."""
        HookRegistry.check_if_exists_or_initialize(model).remove_hook(self.hook_name, recurse=False)
        had_forward, had_registry = self._had
        drop_hook_residue_at(model, forward=not had_forward, registry=not had_registry)

    @staticmethod
    def _show(calls: CallTracker, model: str) -> None:
        set_postfix = getattr(getattr(calls, "bar", None), "set_postfix_str", None)
        if set_postfix is not None:
            set_postfix(f"sr: {model} transformer")

    def _write_trace(self, calls: CallTracker) -> None:
        present = [v for v in self._d if v is not None]
        values = iter(torch.stack(present).tolist() if present else [])  # one host read for the whole call
        d = [None if v is None else next(values) for v in self._d]
        s = decreases(d)
        switch = self.policy.switch_step
        self.switch_step = switch if switch is not None and switch < len(d) else None
        sched = self.policy.schedule
        reason = self.policy.switch_reason if self.switch_step is not None else None
        self.switch = SwitchRecord(self.switch_step, reason, sched.min_step, sched.max_step, sched.delta,
                                   sched.num_steps)
        records = calls.records(d, s)
        self.trace = records
