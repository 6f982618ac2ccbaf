"""Keeping the small transformer in step with the pipeline's device moves and model CPU offload."""

from __future__ import annotations

from typing import Any

import torch

from .. import compat


def parse_to_args(args: tuple, kwargs: dict) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and dtype a `DiffusionPipeline.to(...)` call asks for (same argument rules)."""
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    for arg in args:
        if isinstance(arg, torch.dtype):
            dtype = arg
        elif arg is not None:
            device = torch.device(arg)
    return device, dtype


def model_offload_active(pipe: Any) -> bool:
    return bool(compat.offload_hooks(pipe))


def join_model_offload(pipe: Any, small: torch.nn.Module) -> None:
    """Add the small model to `enable_model_cpu_offload`'s sequence, right after the large transformer:
    when the small model runs, the large one is offloaded, as the next model in the sequence would do."""
    if not model_offload_active(pipe):
        return
    from accelerate import cpu_offload_with_hook

    hooks = compat.offload_hooks(pipe)
    large_hook = next((h for h in hooks if getattr(h, "model", None) is pipe.transformer), None)
    _, hook = cpu_offload_with_hook(small, compat.offload_device(pipe), prev_module_hook=large_hook)
    compat.set_offload_hooks(pipe, [*hooks, hook])


def leave_model_offload(pipe: Any, small: torch.nn.Module) -> None:
    """Take the small model out of the offload sequence (and back to the CPU, where offload keeps models)."""
    hooks = compat.offload_hooks(pipe) or []
    ours = [h for h in hooks if getattr(h, "model", None) is small]
    if not ours:
        return
    from accelerate.hooks import remove_hook_from_module

    compat.set_offload_hooks(pipe, [h for h in hooks if h not in ours])
    remove_hook_from_module(small, recurse=True)
    small.to("cpu")
