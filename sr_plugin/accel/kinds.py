"""One class per acceleration of `sr_plugin.accelerate`, registered in `ACCELERATIONS`: how its keyword is read,
what it checks on a model before anything changes, and how it attaches to and detaches from one model.

`accelerate(pipe, **kw)` dispatches on the table: a new acceleration is one class here (and its hooks in a module of
its own), nothing else to edit. The table's order is the order they attach in (compile first, so that the hooks
stay outside the compiled blocks) and, reversed, the order they come off.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any

import torch

from .. import compat
from ..integrations.cache_dit_mirror import cache_dit_config
from ..instance.patching import InstancePatches
from .compile import DEFAULT_OPTIONS, check_compilable, compile_blocks
from .pab import PABConfig, add_counts, apply_cfg_pab, attention_summary, remove_cfg_pab
from .teacache import TeaCacheConfig, apply_teacache, remove_teacache, resolve_coefficients

if TYPE_CHECKING:
    from . import Accelerations


class Acceleration:
    """One acceleration, as the user asked for it (`from_argument`), on every model in play."""

    #: The keyword of `accelerate` that asks for it.
    name: str = ""
    #: Keywords it cannot be combined with, and why.
    excludes: dict[str, str] = {}

    @classmethod
    def from_argument(cls, value: Any) -> "Acceleration | None":
        """The acceleration for the keyword's value (None: not asked for); a clear error for a bad value."""
        raise NotImplementedError

    def adjust(self, others: dict[str, "Acceleration"]) -> None:
        """Settle what depends on the other accelerations asked for (before any check)."""

    def check(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        """Every error attaching to ``model`` would raise, before anything changes."""

    def attach(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        raise NotImplementedError

    def detach(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        raise NotImplementedError


def _refuse_a_second_block_cache(model: torch.nn.Module, role: str, what: str) -> None:
    if cache_dit_config(model) is not None:
        raise ValueError(f"cache-dit already caches the {role} transformer's blocks; {what} would cache them "
                         "a second time: choose one (cache_dit.disable_cache(pipe), or drop it here)")


class Compile(Acceleration):
    """Regional torch.compile of the blocks (fullgraph and static shapes by default)."""

    name = "compile"

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self._patches: dict[str, InstancePatches] = {}

    @classmethod
    def from_argument(cls, value: Any) -> "Compile | None":
        if value is None or value is False:
            return None
        if not isinstance(value, (bool, dict)):
            raise TypeError(f"compile must be True, False, None or a dict of torch.compile options, got {value!r}")
        return cls({**DEFAULT_OPTIONS, **(value if isinstance(value, dict) else {})})

    def adjust(self, others: dict[str, Acceleration]) -> None:
        if "pab" in others:
            self.options["fullgraph"] = False  # PAB's per-branch decision is a graph break inside each block

    def check(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        check_compilable(model, ctx.adapter.blocks(model), role)

    def attach(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        self._patches[role] = compile_blocks(ctx.adapter.blocks(model), self.options)

    def detach(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        patches = self._patches.pop(role, None)
        if patches is not None:
            patches.undo()


class TeaCache(Acceleration):
    """TeaCache: skip the blocks while the rescaled change of the modulated input stays under the threshold."""

    name = "teacache"
    excludes = {"fbcache": "teacache and fbcache both cache the blocks' residual: choose one"}

    def __init__(self, config: TeaCacheConfig) -> None:
        self.config = config
        #: The coefficients per role and model, resolved (a calibration file beside the weights read) once.
        self._coefficients: dict[str, weakref.WeakKeyDictionary] = {}

    @classmethod
    def from_argument(cls, value: Any) -> "TeaCache | None":
        if value is None:
            return None
        if isinstance(value, bool):
            raise TypeError("teacache takes a threshold or a TeaCacheConfig, not a bool")
        config = TeaCacheConfig(value) if isinstance(value, (int, float)) else value
        if not isinstance(config, TeaCacheConfig):
            raise TypeError(f"teacache must be a threshold or a TeaCacheConfig, got {type(value).__name__}")
        return cls(config)

    def check(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        resolved = self._coefficients.setdefault(role, weakref.WeakKeyDictionary())
        if model not in resolved:
            ctx.adapter.teacache_input(model, self.config.ret_steps)
            resolved[model] = resolve_coefficients(self.config, ctx.adapter, model, role)
        _refuse_a_second_block_cache(model, role, "TeaCache")

    def attach(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        apply_teacache(model, ctx.adapter, ctx.tracker, role, self.config, self._coefficients[role][model])

    def detach(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        remove_teacache(model)


class PyramidAttentionBroadcast(Acceleration):
    """CFG-aware PAB: attention outputs reused per CFG branch, its timestep read from the call tracker."""

    name = "pab"

    def __init__(self, config: PABConfig) -> None:
        self.config = config

    @classmethod
    def from_argument(cls, value: Any) -> "PyramidAttentionBroadcast | None":
        if value is False or value is None:
            return None
        config = PABConfig() if value is True else value
        if not isinstance(config, PABConfig):
            raise TypeError(f"pab must be True or a PABConfig, got {type(value).__name__}")
        return cls(config)

    def attach(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        import dataclasses

        tracker = ctx.tracker
        config = self.config
        if config.current_timestep_callback is None:
            config = dataclasses.replace(config, current_timestep_callback=lambda: tracker.current_timestep)
        tracker.renderers["attention"] = lambda counts: attention_summary(*counts)
        apply_cfg_pab(model, ctx.adapter.attention_modules(model), config,
                      log=lambda branch, computed: tracker.note("attention", role, branch, (int(computed), 1),
                                                                merge=add_counts))

    def detach(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        remove_cfg_pab(model)


class FirstBlockCache(Acceleration):
    """diffusers' First Block Cache (`FirstBlockCacheConfig`), enabled on the large model only: the small one gets
    it the one way any diffusers cache reaches it, from `integrations.user_cache_mirror` at the start of each
    call (same configuration, its own state, off again after the call)."""

    name = "fbcache"

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    @classmethod
    def from_argument(cls, value: Any) -> "FirstBlockCache | None":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"fbcache must be a threshold >= 0, got {value!r}")
        return cls(value)

    def check(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        blocks = len(ctx.adapter.blocks(model))
        if blocks < 2:
            raise ValueError(f"First Block Cache needs at least two transformer blocks (the first decides, the rest "
                             f"are cached); the {role} transformer has {blocks}")
        _refuse_a_second_block_cache(model, role, "First Block Cache")
        if compat.cache_config(model) is not None:
            raise ValueError(f"the {role} transformer already has a diffusers cache enabled "
                             f"({type(compat.cache_config(model)).__name__}); disable it or drop fbcache=")

    def attach(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        from diffusers import FirstBlockCacheConfig

        if role == "large":
            model.enable_cache(FirstBlockCacheConfig(threshold=self.threshold))

    def detach(self, ctx: "Accelerations", model: torch.nn.Module, role: str) -> None:
        if role == "large" and compat.cache_config(model) is not None:
            model.disable_cache()


#: Every acceleration by its keyword, in the order they attach.
ACCELERATIONS: dict[str, type[Acceleration]] = {cls.name: cls for cls in (Compile, TeaCache,
                                                                           PyramidAttentionBroadcast,
                                                                           FirstBlockCache)}


def from_keywords(keywords: dict[str, Any]) -> dict[str, Acceleration]:
    """The accelerations asked for, by keyword, in table order; unknown keywords and exclusive pairs refused."""
    unknown = sorted(set(keywords) - set(ACCELERATIONS))
    if unknown:
        raise TypeError(f"accelerate() got unknown acceleration(s) {', '.join(unknown)}; known: "
                        f"{', '.join(ACCELERATIONS)}")
    chosen: dict[str, Acceleration] = {}
    for name, cls in ACCELERATIONS.items():
        acceleration = cls.from_argument(keywords.get(name))
        if acceleration is not None:
            chosen[name] = acceleration
    for name, acceleration in chosen.items():
        for other, why in acceleration.excludes.items():
            if other in chosen:
                raise ValueError(why)
    for acceleration in chosen.values():
        acceleration.adjust(chosen)
    return chosen
