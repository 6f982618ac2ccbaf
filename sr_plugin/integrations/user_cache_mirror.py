"""Caches the user enabled directly on the large transformer, given to the small one with its own state.

- every cache diffusers ships (``transformer.enable_cache(config)``: First Block Cache, Pyramid Attention
  Broadcast, FasterCache, MagCache, TaylorSeer, SeaCache, TextKV): the small model gets the same configuration
  (its ``current_timestep_callback`` and other callbacks included) for the length of each call, with hooks and
  state of its own, so a small model shared with another pipeline never carries this pipeline's cache into that
  one's calls. A configuration fitted to the large model (MagCache's ``mag_ratios``) is not reused: the small
  model takes the one given to `apply` (``small_cache_config``), and without one the call is refused
  (`check_small_cache`). A cache the user enabled on the small model directly is left as it is.
- para-attn's First Block Cache (``apply_cache_on_pipe``): it patches only ``pipe.transformer`` and keeps its
  buffers in one context per pipeline call, by name: a small model running inside that context would compare
  against, and reuse, the large model's residuals. The small model is patched the same way and runs inside
  a context of its own (same settings, fresh buffers) for each call.

- cache-dit's DBCache / TaylorSeer (``cache_dit.enable_cache(pipe, ...)``): see `cache_dit_mirror`.

- diffusers' attention backend set on the large model (``set_attention_backend``): the small model's attention
  processors that have none of their own get the same one; `undo` sets them back to none.

Checked at the start of every call, so the order of enabling the cache and `sr_plugin.apply` does not matter.
"""

from __future__ import annotations

import contextlib
import dataclasses
from contextlib import AbstractContextManager
from typing import Any

import torch

from .. import compat
from ..instance.patching import InstancePatches, drop_hook_residue
from .cache_dit_mirror import CacheDitMirror, cache_dit_config

_PARA_STATE_FIELDS = {
    "buffers",
    "incremental_name_counters",
    "executed_steps",
    "is_alter_cache",
    "taylorseer",
    "alter_taylorseer",
}


def diffusers_cache_configs() -> tuple[type, ...]:
    """The cache configurations diffusers' `CacheMixin.enable_cache` takes."""
    import diffusers

    return tuple(
        getattr(diffusers, name)
        for name in (
            "FirstBlockCacheConfig",
            "PyramidAttentionBroadcastConfig",
            "FasterCacheConfig",
            "MagCacheConfig",
            "TaylorSeerCacheConfig",
            "SeaCacheConfig",
            "TextKVCacheConfig",
        )
        if hasattr(diffusers, name)
    )


def check_small_cache_config(config: Any) -> None:
    """``apply(small_cache_config=...)``: None or one of diffusers' cache configurations."""
    if config is not None and not isinstance(config, diffusers_cache_configs()):
        names = ", ".join(c.__name__ for c in diffusers_cache_configs())
        raise TypeError(
            f"small_cache_config must be one of diffusers' cache configurations ({names}), got {type(config).__name__}"
        )


def fitted_to_its_model(config: Any) -> str | None:
    """Why a cache configuration's numbers belong to the model they were fitted on (None: they do not)."""
    from diffusers import MagCacheConfig

    if isinstance(config, MagCacheConfig) and not getattr(config, "calibrate", False):
        return "its mag_ratios were fitted to the large model's magnitudes"
    return None


def small_cache_for(large_config: Any, given: Any) -> Any:
    """The configuration the small model gets for the large model's diffusers cache: ``given`` if any, else the
    large model's own (a copy), unless that one was fitted to the large model: then a clear error."""
    if large_config is None or not isinstance(large_config, diffusers_cache_configs()):
        return None
    if given is not None:
        return given
    why = fitted_to_its_model(large_config)
    if why is not None:
        name = type(large_config).__name__
        raise ValueError(
            f"the large transformer's {name} is not reused on the small model ({why}): give the small "
            f"model its own, sr_plugin.apply(pipe, small, small_cache_config={name}(...)) (for "
            f"MagCache, fit the small model's ratios with MagCacheConfig(calibrate=True) on it alone)"
        )
    return large_config


class UserCacheMirror:
    def __init__(self, small: Any, block_lists: list[Any] | None = None, small_cache_config: Any = None) -> None:
        self.small = small
        #: cache-dit on the large model, given to the small one with a context of its own.
        self.cache_dit = CacheDitMirror(small, block_lists or [])
        #: The small model's own configuration for the large model's diffusers cache (`apply`'s).
        self.small_cache_config = small_cache_config
        self._enabled = False
        #: para-attn's patch of the small model: what it replaced, undone exactly (its `_is_cached` and `forward`).
        self._para_patched: InstancePatches | None = None
        self._para_parent: Any = None
        self._para_context: Any = None
        #: The small model's attention processors given the large model's backend, and that backend.
        self._backend_set: list[Any] = []
        self._backend: Any = None
        #: The large model of the running call (set by `sync`).
        self.large: Any = None

    def sync(self, large: torch.nn.Module) -> None:
        small = self.small
        self.large = large
        if large is small:
            return
        self._sync_attention_backend(large)
        self.cache_dit.sync(large)
        wanted = small_cache_for(compat.cache_config(large), self.small_cache_config)
        if self._enabled:  # from a call that did not end (interrupted before its end): taken off first
            self._disable_cache()
        if wanted is not None and compat.cache_config(small) is None:
            small.enable_cache(dataclasses.replace(wanted))  # hooks and state of its own
            self._enabled = True
        if (
            compat.para_attn_cached(large) and not compat.para_attn_cached(small) and cache_dit_config(large) is None
        ):  # para-attn's First Block Cache (cache-dit sets the flag too)
            from para_attn.first_block_cache.diffusers_adapters import apply_cache_on_transformer

            saved = InstancePatches()
            for name in (
                "forward",
                compat.PARA_ATTN_CACHED,
            ):  # as they are now; para-attn then sets both on the instance
                saved.record(small, name)
            apply_cache_on_transformer(small)
            self._para_patched = saved

    def _sync_attention_backend(self, large: torch.nn.Module) -> None:
        backends = {compat.attention_backend(p) for p in _attention_processors(large)} - {None}
        backend = next(iter(backends)) if len(backends) == 1 else None
        if backend == self._backend:
            return
        for processor in self._backend_set:  # the large model's backend changed or was reset
            compat.set_attention_backend(processor, None)
        self._backend_set, self._backend = [], backend
        if backend is not None:
            for processor in _attention_processors(self.small):
                if compat.attention_backend(processor) is None:  # the user's own choice for the small model stays
                    compat.set_attention_backend(processor, backend)
                    self._backend_set.append(processor)

    def end_call(self) -> None:
        """End of a call: the mirrored diffusers cache comes off the small model (put on again at the next
        call's start), so that another pipeline sharing the small model never runs with this one's cache."""
        self._disable_cache()

    def _disable_cache(self) -> None:
        if self._enabled:
            self.small.disable_cache()
            drop_hook_residue(self.small)
            self._enabled = False

    def small_enters(self, step: int, num_steps: int) -> None:
        """A small segment starts at ``step``: its caches start afresh there (cache-dit's context, whose step mask
        is cut at ``step``; para-attn's context, made anew at its next call)."""
        self.cache_dit.at_switch(step, num_steps)
        self._para_parent = None

    def large_returns(self) -> None:
        """The large model runs again after the small one: para-attn's First Block Cache keeps the large model's
        buffers in the call's context by name, so they are cleared (its next call computes, as a first call does).
        diffusers' caches need nothing here: the router resets the leaving model's stateful hooks."""
        if not compat.para_attn_cached(self.large):
            return
        from para_attn.first_block_cache import utils

        context = utils.get_current_cache_context()
        if context is not None:
            context.clear_buffers()
            if context.enable_taylorseer:  # its derivatives were taken from the large model's earlier steps
                from para_attn.first_block_cache.taylorseer import TaylorSeer

                context.taylorseer = TaylorSeer(**context.taylorseer_kwargs)
                if context.enable_alter_cache:
                    context.alter_taylorseer = TaylorSeer(**context.taylorseer_kwargs)

    def small_call_context(self) -> AbstractContextManager:
        """Entered around each small-model call: para-attn's context of the small model for this call."""
        if self._para_patched is None:
            return contextlib.nullcontext()
        from para_attn.first_block_cache import utils

        parent = utils.get_current_cache_context()
        if parent is None:
            return contextlib.nullcontext()
        if parent is not self._para_parent:  # a new pipeline call: fresh buffers, same settings
            settings = {
                f.name: getattr(parent, f.name)
                for f in dataclasses.fields(parent)
                if f.init and f.name not in _PARA_STATE_FIELDS
            }
            self._para_context = utils.create_cache_context(**settings)
            self._para_parent = parent
        return utils.cache_context(self._para_context)

    def undo(self) -> None:
        self.cache_dit.undo()
        for processor in self._backend_set:
            compat.set_attention_backend(processor, None)
        self._backend_set, self._backend = [], None
        self._disable_cache()
        if self._para_patched is not None:
            self._para_patched.undo()
            self._para_patched = None
        self._para_parent = self._para_context = None


def _attention_processors(model: torch.nn.Module) -> list[Any]:
    """The attention processors that take a diffusers attention backend (``_attention_backend``)."""
    processors: list[Any] = []
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if (
            processor is not None
            and compat.takes_attention_backend(processor)
            and all(processor is not q for q in processors)
        ):
            processors.append(processor)
    return processors
