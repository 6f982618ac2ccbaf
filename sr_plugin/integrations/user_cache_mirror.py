"""Caches the user enabled directly on the large transformer, given to the small one with its own state.

- diffusers' First Block Cache (``transformer.enable_cache(FirstBlockCacheConfig(...))``): the small model
  gets the same configuration for the length of each call (its hooks keep their own per-branch state), so a
  small model shared with another pipeline never carries this pipeline's cache into that one's calls.
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
from typing import Any, ContextManager

import torch

from .. import compat
from .cache_dit_mirror import CacheDitMirror, cache_dit_config
from ..instance.patching import InstancePatches, drop_hook_residue

_PARA_STATE_FIELDS = {"buffers", "incremental_name_counters", "executed_steps", "is_alter_cache", "taylorseer",
                      "alter_taylorseer"}


class UserCacheMirror:
    def __init__(self, small: torch.nn.Module, block_lists: list[Any] | None = None) -> None:
        self.small = small
        #: cache-dit on the large model, given to the small one with a context of its own.
        self.cache_dit = CacheDitMirror(small, block_lists or [])
        self._enabled_fbc = False
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
        from diffusers import FirstBlockCacheConfig

        config = compat.cache_config(large)
        fbc = config if isinstance(config, FirstBlockCacheConfig) else None
        if self._enabled_fbc and (fbc is None or compat.cache_config(small) != fbc):  # taken back or changed
            small.disable_cache()
            drop_hook_residue(small)
            self._enabled_fbc = False
        if fbc is not None and compat.cache_config(small) is None:
            small.enable_cache(dataclasses.replace(fbc))
            self._enabled_fbc = True
        if (compat.para_attn_cached(large) and not compat.para_attn_cached(small)
                and cache_dit_config(large) is None):  # para-attn's First Block Cache (cache-dit sets the flag too)
            from para_attn.first_block_cache.diffusers_adapters import apply_cache_on_transformer

            saved = InstancePatches()
            for name in ("forward", compat.PARA_ATTN_CACHED):  # as they are now; para-attn then sets both on the instance
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
        """End of a call: the mirrored First Block Cache comes off the small model (put on again at the next
        call's start), so that another pipeline sharing the small model never runs with this one's cache."""
        if self._enabled_fbc:
            self.small.disable_cache()
            drop_hook_residue(self.small)
            self._enabled_fbc = False

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

    def small_call_context(self) -> ContextManager:
        """Entered around each small-model call: para-attn's context of the small model for this call."""
        if self._para_patched is None:
            return contextlib.nullcontext()
        from para_attn.first_block_cache import utils

        parent = utils.get_current_cache_context()
        if parent is None:
            return contextlib.nullcontext()
        if parent is not self._para_parent:  # a new pipeline call: fresh buffers, same settings
            settings = {f.name: getattr(parent, f.name) for f in dataclasses.fields(parent)
                        if f.init and f.name not in _PARA_STATE_FIELDS}
            self._para_context = utils.create_cache_context(**settings)
            self._para_parent = parent
        return utils.cache_context(self._para_context)

    def undo(self) -> None:
        small = self.small
        self.cache_dit.undo()
        for processor in self._backend_set:
            compat.set_attention_backend(processor, None)
        self._backend_set, self._backend = [], None
        if self._enabled_fbc:
            small.disable_cache()
            drop_hook_residue(small)
            self._enabled_fbc = False
        if self._para_patched is not None:
            self._para_patched.undo()
            self._para_patched = None
        self._para_parent = self._para_context = None


def _attention_processors(model: torch.nn.Module) -> list[Any]:
    """The attention processors that take a diffusers attention backend (``_attention_backend``)."""
    processors = []
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and compat.takes_attention_backend(processor) and all(
                processor is not q for q in processors):
            processors.append(processor)
    return processors
