"""Fresh cache state for every model in play, at the start of each pipeline call and again at its end: what diffusers
does for a pipeline's own components, done for every model sr_plugin brings too (the small model), so that no cached
residual or attention output outlives its call (and memory is freed between calls)."""

from __future__ import annotations

from typing import Any

import torch

from .. import compat
from ..instance.events import CallListener


def reset_caches(model: torch.nn.Module) -> None:
    """Reset (and so free) the state of every stateful hook on ``model``."""
    registry = compat.hook_registry(model)
    if registry is not None:
        registry.reset_stateful_hooks()


class FreshHookState(CallListener):
    """A standard listener of every pipeline's call tracker (`sr_plugin.pipeline.calls`)."""

    def prepare(self, calls: Any) -> None:
        for model in calls.in_play:  # after the other listeners, which may have added caches
            reset_caches(model)

    def end(self, calls: Any) -> None:
        for model in calls.in_play:  # their tensors can be large (PAB: one attention output per module)
            reset_caches(model)
