"""`apply` and the handle it returns: the whole public surface of the switch."""

from __future__ import annotations

from typing import Any

import torch

from .accel import accelerations_of
from .adapters import adapter_for
from .calls import CallTracker
from .offload import join_model_offload, leave_model_offload, model_offload_active, parse_to_args
from .patching import InstancePatches
from .policy import SwitchOptions
from .routing import Router
from .trace import StepRecord

#: Attribute marking a patched pipeline instance; it points at the handle.
HANDLE_ATTR = "_sr_plugin_handle"


class SRHandle:
    """Returned by `apply`. Reports what happened in the last call and undoes everything on `remove`."""

    def __init__(self, pipe: Any, small: torch.nn.Module, router: Router, patches: InstancePatches) -> None:
        self.pipe = pipe
        self.small = small
        self._router = router
        self._patches = patches
        self.removed = False

    @property
    def trace(self) -> list[StepRecord]:
        """Per step of the last call: index, timestep, model ("large"/"small"), d and s."""
        return list(self._router.trace)

    @property
    def switch_step(self) -> int | None:
        """The first step the small model ran in the last call (None: it never ran)."""
        return self._router.switch_step

    @property
    def router(self) -> Router:
        return self._router

    def remove(self) -> None:
        """Restore the pipeline exactly as it was before `apply`. Safe to call twice."""
        if self.removed:
            return
        tracker = CallTracker.of(self.pipe)
        if tracker.active:
            raise RuntimeError("sr_plugin: cannot remove the switch while the pipeline is running")
        tracker.discard(self._router)
        accel = accelerations_of(self.pipe)
        if accel is not None:
            accel.detach("small")
        self._router.mirror.undo()
        self._patches.undo()
        leave_model_offload(self.pipe, self.small)
        self.removed = True

    def __repr__(self) -> str:
        state = "removed" if self.removed else f"switch_step={self.switch_step}"
        return f"SRHandle({type(self.pipe).__name__}, {state})"


def apply(
    pipe: Any,
    small_transformer: torch.nn.Module,
    delta: float | None = None,
    *,
    min_switch_step: int | None = None,
    max_switch_step: int | None = None,
    switch_step: int | None = None,
    small_vae_scaling_factor: float | None = None,
    small_scheduler: Any = None,
) -> SRHandle:
    """Let ``small_transformer`` render the late denoising steps of ``pipe``'s large transformer.

    Args:
        pipe: a diffusers ``WanPipeline`` or ``CogVideoXPipeline``; its ``transformer`` sketches.
        small_transformer: a smaller transformer of the same family (Wan2.1 1.3B, CogVideoX-2b).
        delta: adaptive threshold on the decrease ``s`` of the relative change of x0 (default 0.01).
        min_switch_step / max_switch_step: clamps of the adaptive switch (defaults: max(3, ceil(0.1 N))
            and floor(0.6 N) for N steps).
        switch_step: a fixed switch instead: steps >= k run on the small model (0: small only; >= N: large only).
        small_vae_scaling_factor / small_scheduler: CogVideoX only: the latent scale and noise schedule the
            small model was trained on (defaults: the published CogVideoX-2b values for a 2b-style small
            model with a 5b-style large one, else the large model's).

    Every check runs here, before any generation; a bad input raises and leaves the pipeline untouched.
    """
    options = SwitchOptions.from_user(delta, min_switch_step, max_switch_step, switch_step)
    adapter = adapter_for(pipe)
    if getattr(pipe, HANDLE_ATTR, None) is not None:
        raise RuntimeError(
            "sr_plugin.apply was already called on this pipeline; call handle.remove() before applying again"
        )
    large = getattr(pipe, "transformer", None)
    if large is None:
        raise ValueError(f"this {type(pipe).__name__} has no transformer to sketch with")
    if not isinstance(small_transformer, torch.nn.Module):
        raise TypeError(f"small_transformer must be a torch.nn.Module, got {type(small_transformer).__name__}")
    adapter.check_pipeline(pipe)
    adapter.check_pair(large, small_transformer)
    handoff = adapter.make_handoff(
        pipe, small_transformer, small_vae_scaling_factor=small_vae_scaling_factor, small_scheduler=small_scheduler
    )

    accel = accelerations_of(pipe)
    if accel is not None and small_transformer is not large:
        accel.check(small_transformer, "small")

    router = Router(pipe, small_transformer, adapter, handoff, options)
    patches = InstancePatches()
    _install(pipe, small_transformer, router, patches)
    if accel is not None and small_transformer is not large:
        accel.attach(small_transformer, "small")
    handle = SRHandle(pipe, small_transformer, router, patches)
    patches.set(pipe, HANDLE_ATTR, handle)
    return handle


def _install(pipe: Any, small: torch.nn.Module, router: Router, patches: InstancePatches) -> None:
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
        join_model_offload(pipe, small)
        return result

    CallTracker.of(pipe).add(router)
    patches.set(pipe, "to", to)
    patches.set(pipe, "enable_model_cpu_offload", enable_model_cpu_offload)
    if model_offload_active(pipe):
        join_model_offload(pipe, small)
    else:
        large_device = pipe.transformer.device
        if small.device != large_device:
            small.to(large_device)
