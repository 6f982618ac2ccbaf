"""`apply` and the handle it returns: the whole public surface of the switch."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from .. import compat
from ..adapters import adapter_for
from ..instance.patching import InstancePatches, Rollback
from ..integrations.cache_dit_mirror import check_cache_dit, check_cache_dit_schedule
from ..integrations.distributed import parallelize_like
from ..integrations.offload import join_model_offload, leave_model_offload, model_offload_active, parse_to_args
from ..integrations.user_cache_mirror import check_small_cache_config, small_cache_for
from ..pipeline.calls import CallTracker, check_scheduler_order
from ..pipeline.trace import StepRecord, SwitchRecord
from .routing import Router
from .schedule import Schedule, Segment

#: Attribute marking a patched pipeline instance; it points at the handle.
HANDLE_ATTR = "_sr_plugin_handle"


class SRHandle:
    """Returned by `apply`. Reports what happened in the last call and undoes everything on `remove`."""

    def __init__(
        self, pipe: Any, small: torch.nn.Module, router: Router, patches: InstancePatches, undo_parallel: Any = None
    ) -> None:
        self.pipe = pipe
        self.small: torch.nn.Module | None = small
        self._router: Router | None = router
        self._patches = patches
        self._undo_parallel = undo_parallel
        self.removed = False
        #: The cooperation schedule every call follows (`apply(schedule=...)`, or the one-switch forms).
        self.schedule: Schedule = router.schedule
        #: After `remove`: the last call's (trace, boundaries, segments), kept without the models.
        self._last: tuple[list[StepRecord], list[SwitchRecord], list[Segment]] | None = None

    @property
    def trace(self) -> list[StepRecord]:
        """Per step of the last call: index, timestep, model ("large"/"small"), d and s."""
        return list(self._last[0] if self._last is not None else self._live().trace)

    @property
    def boundaries(self) -> list[SwitchRecord]:
        """Every boundary of the last call, in order: where one model handed over to the other, and why."""
        return list(self._last[1] if self._last is not None else self._live().boundaries)

    @property
    def switch(self) -> SwitchRecord | None:
        """The last call's first hand-over from the large model to the small one (SRDiffusion's switch): its
        step, reason ("delta", "max_switch_step", "fixed") and bounds. None before the first call, and for a call
        with no such hand-over (large only, small only, a small-first schedule that never returns to small)."""
        return next((b for b in self.boundaries if b.leaving == "large" and b.entering == "small"), None)

    @property
    def switch_step(self) -> int | None:
        """The step of `switch`: the first step the small model ran after the large one (None: no such step)."""
        return None if self.switch is None else self.switch.step

    @property
    def segments(self) -> list[Segment]:
        """The last call's segments, in order: ``Segment(role, first_step, end_step)`` (end exclusive)."""
        return list(self._last[2] if self._last is not None else self._live().segments)

    @property
    def router(self) -> Router | None:
        """The switch's router (None after `remove`)."""
        return self._router

    def remove(self) -> None:
        """Restore the pipeline exactly as it was before `apply`. Safe to call twice."""
        if self.removed:
            return
        tracker = CallTracker.of(self.pipe)
        if tracker.active:
            raise RuntimeError("sr_plugin: cannot remove the switch while the pipeline is running")
        small = self.small
        assert small is not None
        tracker.models.leave("small")  # the accelerations take theirs off it (a no-op if it never joined)
        tracker.models.untrack(small)
        tracker.discard(self._live())
        router = self._live()
        router.release()
        self._patches.undo()
        if self._undo_parallel is not None:
            self._undo_parallel()
        leave_model_offload(self.pipe, small)
        # Nothing of sr_plugin holds the small model once removed (its memory is the user's to free): the handle
        # keeps the last call's report, not the router and the models behind it.
        self._last = (list(router.trace), list(router.boundaries), list(router.segments))
        self._router = None
        self._patches = InstancePatches()
        self._undo_parallel = None
        self.small = None
        self.removed = True

    def _live(self) -> Router:
        assert self._router is not None, "the handle was removed"
        return self._router

    def __repr__(self) -> str:
        state = "removed" if self.removed else f"schedule={str(self.schedule)!r}"
        return f"SRHandle({type(self.pipe).__name__}, {state})"


def handle_of(pipe: Any) -> SRHandle | None:
    """The handle `apply` returned for this pipeline, or None if the switch is not applied."""
    return pipe.__dict__.get(HANDLE_ATTR)


def apply(
    pipe: Any,
    small_transformer: torch.nn.Module,
    delta: float | None = None,
    *,
    min_switch_step: int | None = None,
    max_switch_step: int | None = None,
    switch_step: int | None = None,
    schedule: Any = None,
    small_vae_scaling_factor: float | None = None,
    small_scheduler: Any = None,
    small_device: str | torch.device | None = None,
    offload_large: bool = False,
    family_options: Mapping[str, Any] | None = None,
    small_cache_config: Any = None,
) -> SRHandle:
    """Let ``small_transformer`` run some of the denoising steps of ``pipe``'s large transformer: by default the
    late ones (SRDiffusion's adaptive switch), or any cooperation ``schedule``.

    Args:
        pipe: a diffusers ``WanPipeline`` or ``CogVideoXPipeline``; its ``transformer`` sketches.
        small_transformer: a smaller transformer of the same family (Wan2.1 1.3B, CogVideoX-2b).
        delta: adaptive threshold on the decrease ``s`` of the relative change of x0 (default 0.01).
        min_switch_step / max_switch_step: clamps of the adaptive switch (defaults: max(3, ceil(0.1 N))
            and floor(0.6 N) for N steps).
        switch_step: a fixed switch instead: the schedule ``"large:k,small"`` (steps >= k on the small model; 0:
            the small model alone). A call of k steps or fewer is refused, as any schedule that does not fit it.
        schedule: which model runs which steps, as segments ``[(role, end), ...]`` or a string such as
            ``"small:20,large"`` or ``"large:10,small:35,large"`` (role "large" or "small"; end a step, a fraction
            ``0.4`` / ``"40%"``, a noise level ``"t=0.875"``, ``"delta[=D]"`` for SRDiffusion's rule on a large
            segment followed by a small one, or None for the last: to the end); see `sr_plugin.switch.schedule`.
            Not with ``delta`` or ``switch_step``; ``min_switch_step`` / ``max_switch_step`` clamp its adaptive end.
        small_vae_scaling_factor / small_scheduler: CogVideoX only: the latent scale and noise schedule the
            small model was trained on (defaults: the published CogVideoX-2b values for a 2b-style small
            model with a 5b-style large one, else the large model's).
        small_device: keep the small model on another device (for example "cuda:1"): latents and embeddings
            move there at each small-model call, the prediction comes back; `pipe.to` leaves it in place.
        family_options: the family's own hand-off options by name (CogVideoX: ``small_vae_scaling_factor``,
            ``small_scheduler``; the keywords above stay as shorthands); the adapter validates them.
        offload_large: after the switch, move the large model's weights to pinned host memory on a side stream,
            overlapped with the small model's steps; they come back at the start of the next call (CUDA only).
        small_cache_config: the small model's own configuration for the diffusers cache enabled on the large
            model (``pipe.transformer.enable_cache(config)``); by default the small model gets the large model's,
            with state of its own, except a configuration fitted to the large model (MagCache's ``mag_ratios``),
            which is refused without one.

    A context-parallel large transformer (diffusers' `enable_parallelism`, or para-attn's `parallelize_pipe`
    for CogVideoX) makes the small one parallel on the same mesh, and all ranks switch at the same step:
    call `apply` on every rank.

    Every check runs here, before any generation; a bad input raises and leaves the pipeline untouched. (Most of
    this function's length is this docstring: the checks are in `_check_pair`, the changes in `_install_all`.)
    """
    plan = _schedule_from(delta, min_switch_step, max_switch_step, switch_step, schedule)
    adapter = adapter_for(pipe)
    large = _check_pair(pipe, small_transformer, adapter, plan)
    check_small_cache_config(small_cache_config)
    small_cache_for(compat.cache_config(large), small_cache_config)  # a cache fitted to the large model: refused
    handoff = adapter.make_handoff(
        pipe,
        small_transformer,
        **_family_options(
            adapter, family_options, small_vae_scaling_factor=small_vae_scaling_factor, small_scheduler=small_scheduler
        ),
    )
    if not isinstance(offload_large, bool):
        raise TypeError(f"offload_large must be True or False, got {offload_large!r}")
    if offload_large and large.device.type != "cuda":
        warnings.warn(
            f"offload_large=True does nothing while the large transformer is on {large.device.type}: it "
            "moves weights off a CUDA device only (it starts working once the pipeline is moved to CUDA)",
            stacklevel=2,
        )
    if small_device is not None:
        small_device = _check_device(small_device)
    existing = CallTracker.existing(pipe)
    if existing is not None:
        existing.models.check_join("small", small_transformer)  # e.g. accelerations that cannot go on it
    _check_loaded(small_transformer)
    router = Router(
        pipe,
        small_transformer,
        adapter,
        handoff,
        plan,
        small_device=small_device,
        small_cache_config=small_cache_config,
    )
    return _install_all(pipe, router, offload_large)


def _check_pair(pipe: Any, small: Any, adapter: Any, plan: Schedule) -> torch.nn.Module:
    """Every check of the pipeline and the pair that needs no change; returns the large model."""
    if getattr(pipe, HANDLE_ATTR, None) is not None:
        raise RuntimeError(
            "sr_plugin.apply was already called on this pipeline; call handle.remove() before applying again"
        )
    large = getattr(pipe, "transformer", None)
    if large is None:
        raise ValueError(f"this {type(pipe).__name__} has no transformer to sketch with")
    if not isinstance(small, torch.nn.Module):
        if isinstance(getattr(small, "transformer", None), torch.nn.Module):
            raise TypeError(
                f"small_transformer is a {type(small).__name__}, a whole pipeline: give its transformer, "
                "sr_plugin.apply(pipe, small_pipe.transformer)"
            )
        raise TypeError(f"small_transformer must be a torch.nn.Module, got {type(small).__name__}")
    if small is large:
        raise ValueError(
            "small_transformer is the pipeline's own transformer (pipe.transformer, the large model): "
            "the switch would hand every step to the model that already runs it. Give a smaller "
            "transformer of the same family (a copy of the large one works too, for testing)"
        )
    adapter.check_pipeline(pipe)
    adapter.check_pair(large, small)
    _warn_if_larger(large, small)
    check_cache_dit(large, small, adapter.block_lists(small))
    check_cache_dit_schedule(large, plan)
    adapter.check_scheduler(pipe.scheduler)  # checked again at every call (the scheduler may be swapped)
    check_scheduler_order(pipe.scheduler)
    return large


def _install_all(pipe: Any, router: Router, offload_large: bool) -> SRHandle:
    """Every change `apply` makes, each with its undo: a failure part way leaves the pipeline untouched."""
    small, large = router.small, router.large
    rollback = Rollback()
    try:
        if router.small_device is not None:
            rollback.add(_move_back(small))
            small.to(router.small_device)
        undo_parallel = parallelize_like(large, small, router.adapter.para_attn_refusal)  # collective, on every rank
        if undo_parallel is not None:
            rollback.add(undo_parallel)
        patches = InstancePatches()
        rollback.add(patches.undo)
        _install(pipe, small, router, patches, rollback)
        tracker = CallTracker.of(pipe)
        tracker.models.join("small", small)  # the accelerations attach theirs
        rollback.add(lambda: tracker.models.leave("small"))
        if offload_large:
            rollback.add(router.start_offloading())
            _restore_early(pipe, router, patches)
        handle = SRHandle(pipe, small, router, patches, undo_parallel)
        patches.set(pipe, HANDLE_ATTR, handle)
    except BaseException:
        rollback.run()
        raise
    return handle


def _schedule_from(delta: Any, min_switch_step: Any, max_switch_step: Any, switch_step: Any, schedule: Any) -> Schedule:
    """The cooperation schedule the user asked for: ``schedule=``, or the one-switch keywords (the default)."""
    if schedule is None:
        return Schedule.one_switch(delta, min_switch_step, max_switch_step, switch_step)
    given = [n for n, v in (("delta", delta), ("switch_step", switch_step)) if v is not None]
    if given:
        raise ValueError(
            f"schedule= says which model runs which steps; {' and '.join(given)} "
            f"{'is' if len(given) == 1 else 'are'} the one-switch form of it: pass one or the other "
            "(an adaptive end in a schedule: 'large:delta=0.01,small')"
        )
    return Schedule.parse(schedule).with_bounds(min_switch_step, max_switch_step)


def _warn_if_larger(large: torch.nn.Module, small: torch.nn.Module) -> None:
    """A "small" model with more weights than the large one is most likely the pair swapped: said, not refused (a
    user may have reasons)."""
    n_large, n_small = (sum(p.numel() for p in m.parameters()) for m in (large, small))
    if n_small > n_large:
        warnings.warn(
            f"the small transformer has more parameters ({n_small:,}) than the pipeline's own transformer "
            f"({n_large:,}): were the two swapped? sr_plugin.apply(pipe, small) keeps pipe.transformer as the "
            "large model and runs the one given for the steps the schedule hands to it",
            stacklevel=3,
        )


def _check_device(device: Any) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"small_device={device!r} is not a device ({err})") from None
    if device.type == "meta":
        raise ValueError("small_device='meta' would drop the small model's weights; give a real device")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(
            f"small_device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
            f"device(s){'' if torch.cuda.is_available() else ' (this torch build or machine has no CUDA)'}"
        )
    return device


def _check_loaded(small: torch.nn.Module) -> None:
    meta = next((n for n, t in [*small.named_parameters(), *small.named_buffers()] if t.is_meta), None)
    if meta is not None:
        raise ValueError(
            f"the small transformer's weights are not loaded (its {meta} is on the meta device): "
            "load them (from_pretrained, or load_state_dict(..., assign=True)) before sr_plugin.apply"
        )


def _move_back(model: torch.nn.Module) -> Any:
    """An undo for ``model.to(...)``: back to the device of its first weight."""
    first = next(iter([*model.parameters(), *model.buffers()]), None)
    device = None if first is None else first.device
    return lambda: model.to(device) if device is not None else None


def _family_options(adapter: Any, family_options: Mapping[str, Any] | None, **shorthands: Any) -> dict[str, Any]:
    """The family's hand-off options: ``family_options`` merged with the keyword shorthands, by the adapter's
    option names; an unknown name or one given twice is an error."""
    if family_options is None:
        return shorthands
    if not isinstance(family_options, Mapping):
        raise TypeError(
            f"family_options must be a mapping of option names to values, got {type(family_options).__name__}"
        )
    unknown = [k for k in family_options if k not in adapter.option_names]
    if unknown:
        known = ", ".join(adapter.option_names) or "none"
        raise TypeError(f"unknown {adapter.name} family option(s) {', '.join(map(str, unknown))}; known: {known}")
    twice = [k for k, v in shorthands.items() if v is not None and k in family_options]
    if twice:
        raise TypeError(f"{', '.join(twice)} given both as a keyword and in family_options")
    return {**{k: v for k, v in shorthands.items() if k in adapter.option_names or v is not None}, **family_options}


def _restore_early(pipe: Any, router: Router, patches: InstancePatches) -> None:
    """With offload_large, queue the large model's way back at the very start of a call (`check_inputs` is the
    first thing both pipelines do): before the pipeline reads its execution device from `pipe.transformer`,
    and early enough for the copy to overlap the text encoder (and a small-first segment); the device waits for
    it when the large model's first segment starts."""
    original = pipe.check_inputs

    def check_inputs(*args: Any, **kwargs: Any) -> Any:
        router.offloader.prefetch()
        return original(*args, **kwargs)

    patches.set(pipe, "check_inputs", check_inputs)


def _install(pipe: Any, small: Any, router: Router, patches: InstancePatches, rollback: Rollback) -> None:
    """The router joins the call tracker; `.to` and model CPU offload carry the small model along."""
    original_to = pipe.to
    original_enable_offload = pipe.enable_model_cpu_offload

    def to(*args: Any, **kwargs: Any) -> Any:
        result = original_to(*args, **kwargs)
        if router.small_device is None:
            device, dtype = parse_to_args(args, kwargs)
            move = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
            if move:
                small.to(**move)
        return result

    def enable_model_cpu_offload(*args: Any, **kwargs: Any) -> Any:
        leave_model_offload(pipe, small)
        result = original_enable_offload(*args, **kwargs)
        if router.small_device is None:
            join_model_offload(pipe, small)
        return result

    original_encode = getattr(pipe, "encode_prompt", None)

    def encode_prompt(*args: Any, **kwargs: Any) -> Any:
        assert original_encode is not None
        out = original_encode(*args, **kwargs)  # (prompt_embeds, negative_prompt_embeds)
        if router.small is not pipe.transformer and isinstance(out, tuple) and isinstance(out[0], torch.Tensor):
            router.adapter.check_prompt_embeds(router.small, out[0])
        return out

    tracker = CallTracker.of(pipe)
    tracker.add(router)
    rollback.add(lambda: tracker.discard(router))
    if original_encode is not None:  # the family's text-length check, right after the prompt is encoded
        patches.set(pipe, "encode_prompt", encode_prompt)
    tracker.models.track(small)
    rollback.add(lambda: tracker.models.untrack(small))
    patches.set(pipe, "to", to)
    patches.set(pipe, "enable_model_cpu_offload", enable_model_cpu_offload)
    if router.small_device is not None:
        pass  # the small model stays on its own device
    elif model_offload_active(pipe):
        join_model_offload(pipe, small)
        rollback.add(lambda: leave_model_offload(pipe, small))
    else:
        large_device = pipe.transformer.device
        if small.device != large_device:
            rollback.add(_move_back(small))
            small.to(large_device)
