"""cache-dit (DBCache, TaylorSeer) enabled by the user on the pipeline, given to the small model with its own
context.

`cache_dit.enable_cache(pipe, ...)` patches the pipeline *class*'s ``__call__`` (entering, per call, a fresh
context for each transformer it cached) and the large model's ``forward`` (which swaps its block list for
cache-dit's unified blocks). The small model, which takes the large one's place after the switch, is not
among them: it would run uncached. So it is cached "transformer only" (`cache_dit.enable_cache(small, ...)`,
a context of its own, kept by cache-dit across calls) with a copy of the large model's configuration, and its
context is made afresh at every switch: its warm-up starts there, and a step mask (``steps_computation_mask``)
is cut at the switch step, since a context counts its own steps. Everything cache-dit sets on the small model
and its block lists is put back exactly when the user's cache goes or `handle.remove()` runs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .. import compat


def cache_dit_config(model: torch.nn.Module) -> dict[str, Any] | None:
    """The configuration cache-dit caches ``model`` with (``cache_config`` and ``calibrator_config``), or None
    if cache-dit does not cache it."""
    manager, names, kwargs = compat.cache_dit_context(model)
    if manager is None or not names or kwargs is None or not type(manager).__module__.startswith("cache_dit"):
        return None
    return {k: kwargs[k] for k in ("cache_config", "calibrator_config") if kwargs.get(k) is not None}


def check_cache_dit(large: torch.nn.Module, small: torch.nn.Module, block_lists: list[Any]) -> None:
    """Raise, before anything changes, if the large model's cache-dit setup cannot carry over to ``small``."""
    if cache_dit_config(large) is None:
        return
    contexts = len(compat.cache_dit_context(large)[1])
    if contexts != 1 or len(block_lists) != 1:
        raise ValueError(
            f"cache-dit caches the large transformer with {contexts} block contexts and the small one "
            f"has {len(block_lists)} block lists: sr_plugin gives the small model one context for one "
            "block list. Disable cache-dit (cache_dit.disable_cache(pipe)) to use the switch"
        )
    from cache_dit.caching.block_adapters import BlockAdapterRegister

    if not BlockAdapterRegister.is_supported(small):
        raise ValueError(
            f"cache-dit has no block adapter for the small {type(small).__name__}, so it cannot "
            "cache it as it caches the large one: disable cache-dit (cache_dit.disable_cache(pipe))"
        )


def check_cache_dit_schedule(large: torch.nn.Module, schedule: Any) -> None:
    """cache-dit counts the large model's steps in one context per call, from its first forward, and cannot restart
    it part way: with cache-dit on the large model, a schedule must run it in one segment from step 0."""
    roles = schedule.roles
    if cache_dit_config(large) is None or roles[0] == "large" and roles.count("large") == 1:
        return
    raise ValueError(
        f"cache-dit caches the large transformer, and the schedule {schedule} does not run it in one "
        "segment from step 0 (cache-dit counts its steps in one context per call, which cannot restart "
        "part way): use a large-first schedule, or disable cache-dit (cache_dit.disable_cache(pipe))"
    )


class CacheDitMirror:
    """The small model's cache-dit context, following the large model's."""

    def __init__(self, small: torch.nn.Module, block_lists: list[torch.nn.Module]) -> None:
        self.small = small
        self.block_lists = block_lists
        self._source: str | None = None  # the large model's configuration the small one now mirrors
        self._kwargs: dict[str, Any] | None = None
        self._saved: list[tuple[Any, dict[str, Any]]] = []

    @property
    def active(self) -> bool:
        return self._kwargs is not None

    def sync(self, large: torch.nn.Module) -> None:
        """At the start of a call: follow the large model's cache-dit configuration (on, off or changed)."""
        kwargs = cache_dit_config(large)
        source = None if kwargs is None else repr(kwargs)
        if source == self._source:
            return
        self.undo()
        if kwargs is None:
            return
        check_cache_dit(large, self.small, self.block_lists)
        import cache_dit

        self._saved = [(obj, dict(vars(obj))) for obj in (self.small, *self.block_lists)]
        try:
            cache_dit.enable_cache(self.small, **copy.deepcopy(kwargs))
        except BaseException:
            self._restore()
            raise
        self._kwargs, self._source = kwargs, source

    def at_switch(self, step: int, num_steps: int) -> None:
        """The small model takes over at ``step`` of ``num_steps``: a fresh context, its step mask cut there."""
        if self._kwargs is None:
            return
        import cache_dit

        kwargs = copy.deepcopy(self._kwargs)
        config = kwargs["cache_config"]
        mask = getattr(config, "steps_computation_mask", None)
        if mask is not None:
            config.steps_computation_mask = list(mask)[step:]
        if getattr(config, "num_inference_steps", None) is not None:
            config.num_inference_steps = num_steps - step
        cache_dit.refresh_context(self.small, **kwargs)

    def undo(self) -> None:
        if self._kwargs is None:
            return
        import cache_dit

        try:
            cache_dit.disable_cache(self.small)
        finally:
            self._restore()
            self._kwargs = self._source = None

    def _restore(self) -> None:
        """Put back every instance attribute cache-dit set, changed or removed on the small model and its blocks."""
        for obj, before in self._saved:
            now = vars(obj)
            for name in [n for n in now if n not in before]:
                del now[name]
            for name, value in before.items():
                if now.get(name, _MISSING) is not value:
                    now[name] = value
        self._saved = []


_MISSING = object()
