"""The accelerations `sr_plugin.accelerate` knows, each found by its typed config or by its keyword.

An acceleration is one class (`Acceleration`) in the module of its hooks, registered with `register_acceleration`:
its ``config_types`` (the typed form, e.g. ``TeaCacheConfig(0.1)``), its ``keyword`` (the shorthand, e.g.
``teacache=0.1``), what it checks on a model before anything changes, and how it attaches to and detaches from one
model. Adding one is a new module that registers itself (and an import in `accel/__init__.py`); nothing else names
the kinds. ``order`` is the order they attach in (compile first, so that the hooks stay outside the compiled
blocks) and, reversed, the order they come off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from . import Accelerations


class Acceleration:
    """One acceleration, as the user asked for it, on every model in play."""

    #: The keyword of `accelerate` that asks for it (the shorthand).
    keyword: str = ""
    #: The typed configs that ask for it (the first is the one `from_keyword` builds).
    config_types: tuple[type, ...] = ()
    #: Attach order (lower first).
    order: int = 50
    #: Whether it reuses cached activations (a calibration must not measure with it on).
    caches: bool = False
    #: Keywords it cannot be combined with, and why.
    excludes: dict[str, str] = {}

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def from_keyword(cls, value: Any) -> Acceleration | None:
        """The acceleration for the keyword's value (None: not asked for); a clear error for a bad value."""
        raise NotImplementedError

    def adjust(self, others: dict[str, Acceleration]) -> None:
        """Settle what depends on the other accelerations asked for (before any check)."""

    def check(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        """Every error attaching to ``model`` would raise, before anything changes."""

    def attach(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        raise NotImplementedError

    def detach(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        raise NotImplementedError


#: The registered accelerations by keyword.
_REGISTRY: dict[str, type[Acceleration]] = {}


def register_acceleration(cls: type[Acceleration]) -> type[Acceleration]:
    """Class decorator: make an acceleration known to `accelerate` by its keyword and its config types."""
    if not cls.keyword or not cls.config_types:
        raise TypeError(f"{cls.__name__} cannot be registered: it must name its keyword and its config_types")
    _REGISTRY[cls.keyword] = cls
    return cls


def registered() -> dict[str, type[Acceleration]]:
    """Every registered acceleration by keyword, in attach order."""
    return dict(sorted(_REGISTRY.items(), key=lambda item: item[1].order))


def _by_config(config: Any) -> type[Acceleration]:
    for cls in _REGISTRY.values():
        if isinstance(config, cls.config_types):
            return cls
    known = ", ".join(t.__name__ for cls in registered().values() for t in cls.config_types)
    raise TypeError(
        f"accelerate() takes acceleration configs ({known}) or keywords "
        f"({', '.join(registered())}); got a {type(config).__name__}"
    )


def from_arguments(configs: tuple[Any, ...], keywords: dict[str, Any]) -> dict[str, Acceleration]:
    """The accelerations asked for (typed configs and keywords), by keyword, in attach order; unknown keywords, a
    kind asked for twice and exclusive pairs refused."""
    unknown = sorted(set(keywords) - set(_REGISTRY))
    if unknown:
        raise TypeError(
            f"accelerate() got unknown acceleration(s) {', '.join(unknown)}; known: {', '.join(registered())}"
        )
    chosen: dict[str, Acceleration] = {}
    for config in configs:
        cls = _by_config(config)
        if cls.keyword in chosen:
            raise ValueError(f"{cls.keyword} is asked for twice: give one {type(config).__name__}")
        chosen[cls.keyword] = cls(config)
    for keyword, value in keywords.items():
        acceleration = _REGISTRY[keyword].from_keyword(value)
        if acceleration is None:
            continue
        if keyword in chosen:
            raise ValueError(f"{keyword} is asked for twice: as a config and as {keyword}=")
        chosen[keyword] = acceleration
    chosen = {k: chosen[k] for k in registered() if k in chosen}
    for acceleration in chosen.values():
        for other, why in acceleration.excludes.items():
            if other in chosen:
                raise ValueError(why)
    for acceleration in chosen.values():
        acceleration.adjust(chosen)
    return chosen


def refuse_a_second_block_cache(model: torch.nn.Module, role: str, what: str) -> None:
    from ..integrations.cache_dit_mirror import cache_dit_config

    if cache_dit_config(model) is not None:
        raise ValueError(
            f"cache-dit already caches the {role} transformer's blocks; {what} would cache them "
            "a second time: choose one (cache_dit.disable_cache(pipe), or drop it here)"
        )
