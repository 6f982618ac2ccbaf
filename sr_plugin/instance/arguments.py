"""One argument binder: hooks read a call's arguments by name, however the caller passed them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def binder(cls: type, method: str = "forward") -> Callable[[tuple, dict], dict[str, Any]]:
    """``bind(args, kwargs) -> {name: value}`` by the parameters of ``cls.method`` (its class signature, without
    ``self``). The class's, not the instance's: an instance wrapper installed earlier (a hook, a compiled
    forward) may show ``*args, **kwargs`` instead. Parameters left to their defaults are absent."""
    names = list(inspect.signature(getattr(cls, method)).parameters)[1:]

    def bind(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**dict(zip(names, args)), **kwargs}

    return bind
