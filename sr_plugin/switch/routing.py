"""The switch itself: follows the call's cooperation plan (`schedule.Plan`) step by step and puts the model whose
segment starts in the pipeline's ``transformer`` slot.

The pipelines read ``self.transformer`` afresh at every step, so between two steps the small model is put there
(with a hook that maps its inputs and outputs) and the large one put back, as many times as the plan says. A
boundary therefore always falls between two steps, whatever the number of transformer calls per step. At every
boundary the model that leaves drops its cached state (TeaCache residuals, First Block Cache, PAB's attention),
so a model that comes back never reuses what it cached before the other one ran.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import HookRegistry

from .. import compat
from ..adapters import FamilyAdapter, Handoff
from ..instance.events import CallListener
from ..instance.patching import InstancePatches, drop_hook_residue_at
from ..integrations.cache_dit_mirror import check_cache_dit_schedule
from ..integrations.distributed import cp_group
from ..integrations.hook_state import reset_caches
from ..integrations.offload import model_offload_active
from ..integrations.offload_large import LargeOffloader
from ..integrations.user_cache_mirror import UserCacheMirror
from ..pipeline.calls import CallTracker
from ..pipeline.trace import StepRecord, SwitchRecord
from .handoff_hook import HandoffHook
from .metric import relative_change
from .policy import decreases
from .schedule import Plan, Schedule, Segment, segments_of

#: Marks a small model while a call of the pipeline that holds it runs (see `Router._check_small_free`).
_IN_USE = "_sr_plugin_rendering_for"


class Router(CallListener):
    """Owns one pipeline's cooperation: the step observer, the plan of segments and the transformer swaps."""

    #: With ``offload_large``: how many small steps before the large model's return its weights start coming back.
    #: A small segment no longer than this keeps the large model's weights on the device.
    PREFETCH_STEPS = 2

    def __init__(
        self,
        pipe: Any,
        small: torch.nn.Module,
        adapter: FamilyAdapter,
        handoff: Handoff,
        schedule: Schedule,
        small_device: torch.device | None = None,
        small_cache_config: Any = None,
    ) -> None:
        self.pipe = pipe
        self.small = small
        self.adapter = adapter
        self.handoff = handoff
        self.schedule = schedule
        self.small_device = small_device
        #: Caches the user enabled on the large model, mirrored onto the small one with their own state.
        self.mirror = UserCacheMirror(small, adapter.block_lists(small), small_cache_config)
        #: Factories of context managers entered around every call of the small model.
        self.small_call_contexts: list[Callable[[], Any]] = [self.mirror.small_call_context]
        #: With offload_large: moves the large model's weights off the GPU while the small model runs.
        self.offloader: Any = None
        self.hook_name = f"sr_plugin_handoff_{uuid.uuid4().hex[:8]}"
        self.trace: list[StepRecord] = []
        self.segments: list[Segment] = []
        #: Every boundary of the last call, in order; the first from the large model to the small one is `switch`.
        self.boundaries: list[SwitchRecord] = []
        self.plan: Plan | None = None
        self.large: torch.nn.Module = pipe.transformer
        self._checked_large: torch.nn.Module | None = pipe.transformer
        #: ``pipe.transformer`` (and the expert slots) while the small model runs: undone when the large returns.
        self._slots = InstancePatches()
        self._hooked: torch.nn.Module | None = None
        self._pending: str | None = None
        self._prefetch_at: int | None = None

    # ------------------------------------------------------------------ call bracket
    def begin(self, calls: CallTracker) -> None:
        """Start of the denoising loop: every check first, then fresh per-call state."""
        self.trace, self.segments, self.boundaries = [], [], []  # a refused call: no steps
        self._d: list[torch.Tensor | None] = []
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
            raise ValueError(
                "the large transformer became context-parallel after sr_plugin.apply: call "
                "handle.remove() and sr_plugin.apply(...) again, so that the small one is parallelized too"
            )
        check_cache_dit_schedule(large, self.schedule)
        train_steps = float(getattr(pipe.scheduler.config, "num_train_timesteps", 1000))
        self.plan = self.schedule.plan(
            calls.timesteps, train_steps, self.adapter.latest_switch_step(pipe, calls.timesteps)
        )
        self.handoff.begin_call(pipe)
        self.mirror.sync(large)
        if self.plan.warning is not None:
            warnings.warn(f"sr_plugin: {self.plan.warning}", stacklevel=2)
        self.large = large
        self._prev_x0: torch.Tensor | None = None
        self._d = []
        self._pending, self._prefetch_at = None, None
        if self.small is not large:  # on for the whole call, over every hook a cache put on the small model
            self._hook_small()
        self._show(calls, "large")
        first = self.plan.role_at(0) if calls.num_steps else "large"
        if first == "small":
            self._swap(calls, "small", 0)
        elif self.offloader is not None:
            self.offloader.restore()  # already queued when the prompt was encoded; the device waits for it here
        if self.small is not large:
            vars(self.small)[_IN_USE] = self  # released by `end`, which runs once `begin` has returned

    def after_step(self, calls: CallTracker, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        """Observe step j's guided output, then decide who runs step j + 1."""
        j = calls.step
        plan = self._plan()
        x0 = self.adapter.denoised(self.pipe.scheduler, j, calls.timesteps[j], sample, model_output)
        d = None if self._prev_x0 is None else calls.agree(relative_change(x0, self._prev_x0))
        self._d.append(d)
        # The one host read per step, and only while the decision still depends on it.
        plan.observe(j, float(d) if d is not None and plan.needs_metric() else None)
        self._prev_x0 = x0
        if j + 1 >= calls.num_steps:
            return
        role = plan.role_at(j + 1)
        if role == calls.running:
            if self._prefetch_at == j + 1:
                self._prefetch_at = None
                self.offloader.prefetch()  # the large model returns in PREFETCH_STEPS steps
        elif self.adapter.step_ends_with_progress_update:
            self._pending = role  # after the step-end callback, which must see this step's model
        else:
            self._swap(calls, role, j + 1)

    def step_ended(self, calls: CallTracker) -> None:
        if self._pending is not None:
            role, self._pending = self._pending, None
            self._swap(calls, role, calls.step)

    def end(self, calls: CallTracker) -> None:
        """End of the loop (also on error or interrupt): put the pipeline back, then write the trace."""
        self._pending = None
        if vars(self.small).get(_IN_USE) is self:
            del vars(self.small)[_IN_USE]
        try:
            self._slots.undo()
            if self._hooked is not None:
                self._unhook(self._hooked)
        finally:
            self._hooked = None
            self.mirror.end_call()
            self._write_trace(calls)

    def _plan(self) -> Plan:
        assert self.plan is not None, "no call is running"
        return self.plan

    def _check_small_free(self) -> None:
        """One call in flight per small model: the hand-off's per-call state (the hook, CogVideoX's latent
        mapping) lives on the model, so two pipelines sharing it must not run calls at the same time."""
        holder = vars(self.small).get(_IN_USE)
        if holder is not None and holder is not self:
            raise RuntimeError(
                f"the small transformer is in use by a call of another pipeline (a {type(holder.pipe).__name__}) that "
                "is still running: give each pipeline its own small model instance, or run the calls one after another"
            )

    # ------------------------------------------------------------------ the boundaries
    def _swap(self, calls: CallTracker, role: str, step: int) -> None:
        """``role``'s model takes the pipeline's transformer slot from ``step`` on (a segment boundary)."""
        if role == "small":
            self._to_small(calls, step)
        else:
            self._to_large(calls, step)
        calls.running = role
        self._show(calls, role)

    def _hook_small(self) -> None:
        """The hand-off hook on the small model, for the rest of the call (it acts on the small model only)."""
        small = self.small
        if self._hooked is None:
            self._had = ("forward" in vars(small), hasattr(small, compat.HOOK_REGISTRY_ATTR))
            HookRegistry.check_if_exists_or_initialize(small).register_hook(
                HandoffHook(self.handoff, self.small_device, self.small_call_contexts), self.hook_name
            )
            self._hooked = small

    def _to_small(self, calls: CallTracker, step: int) -> None:
        small = self.small
        self._hook_small()
        self._slots.set(self.pipe, "transformer", small)
        for slot in self.adapter.expert_slots(self.pipe):  # e.g. Wan2.2's low-noise expert: the small one renders
            self._slots.set(self.pipe, slot, small)
        if self.large is small:
            return
        self.mirror.small_enters(step, calls.num_steps)  # a fresh cache context of its own from this step
        if step > 0:
            reset_caches(self.large)  # free its cached residuals/attention; it starts clean if it returns
        if self.offloader is not None and step > 0 and not model_offload_active(self.pipe):
            back = self._plan().next_start("large", step)
            if back is None or back - step > self.PREFETCH_STEPS:
                self.offloader.offload()  # queued behind the large model's last step; returns at once
                self._prefetch_at = None if back is None else back - self.PREFETCH_STEPS

    def _to_large(self, calls: CallTracker, step: int) -> None:
        self._slots.undo()
        if self.large is self.small:
            return
        reset_caches(self.small)  # it starts clean if it runs again
        self.mirror.large_returns()
        if self.offloader is not None:
            self.offloader.restore()  # queued PREFETCH_STEPS ago; the device waits for the copies here

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
        self.segments = segments_of(list(calls.ran))
        if self.plan is None:
            return
        self.boundaries = [b for b in self.plan.boundaries if b.step < len(calls.ran)]
        self.trace = calls.records(d, s)

    @property
    def switch(self) -> SwitchRecord | None:
        """The last call's first hand-over from the large model to the small one (None: there was none)."""
        return next((b for b in self.boundaries if b.leaving == "large" and b.entering == "small"), None)

    @property
    def switch_step(self) -> int | None:
        return None if self.switch is None else self.switch.step

    # ------------------------------------------------------------------ what apply installs and remove undoes
    def start_offloading(self) -> Callable[[], None]:
        """``offload_large``: the large model's weights leave the device during small segments; returns the undo."""
        self.offloader = LargeOffloader(self.large, self.adapter.blocks(self.large))
        return self.offloader.release

    def release(self) -> None:
        """Undo what the router holds beyond the call tracker: the caches mirrored onto the small model and the
        large model's offloading."""
        self.mirror.undo()
        if self.offloader is not None:
            self.offloader.release()
