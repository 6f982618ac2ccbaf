"""diffusers' First Block Cache through `sr_plugin.accelerate` (``fbcache=0.1`` or ``FirstBlockCacheConfig(...)``)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch
from diffusers import FirstBlockCacheConfig

from .. import compat
from .registry import Acceleration, refuse_a_second_block_cache, register_acceleration

if TYPE_CHECKING:
    from . import Accelerations


@register_acceleration
class FirstBlockCache(Acceleration):
    """diffusers' First Block Cache (its own `FirstBlockCacheConfig`), enabled on the large model only: the small
    one gets it the one way any diffusers cache reaches it, from `integrations.user_cache_mirror` at the start of
    each call (same configuration, its own state, off again after the call)."""

    keyword = "fbcache"
    config_types = (FirstBlockCacheConfig,)
    order = 30
    caches = True

    @classmethod
    def from_keyword(cls, value: Any) -> FirstBlockCache | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"fbcache must be a threshold >= 0, got {value!r}")
        return cls(FirstBlockCacheConfig(threshold=float(value)))

    def check(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        blocks = len(ctx.adapter.blocks(model))
        if blocks < 2:
            raise ValueError(
                f"First Block Cache needs at least two transformer blocks (the first decides, the rest "
                f"are cached); the {role} transformer has {blocks}"
            )
        refuse_a_second_block_cache(model, role, "First Block Cache")
        if compat.cache_config(model) is not None:
            raise ValueError(
                f"the {role} transformer already has a diffusers cache enabled "
                f"({type(compat.cache_config(model)).__name__}); disable it or drop fbcache="
            )

    def attach(self, ctx: Accelerations, model: Any, role: str) -> None:
        if role == "large":
            model.enable_cache(dataclasses.replace(self.config))

    def detach(self, ctx: Accelerations, model: Any, role: str) -> None:
        if role == "large" and compat.cache_config(model) is not None:
            model.disable_cache()
