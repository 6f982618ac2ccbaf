"""Instance attribute patches that can be undone exactly (never classes: other instances stay untouched)."""

from __future__ import annotations

from typing import Any

_MISSING = object()


class InstancePatches:
    """Sets attributes on object instances and restores each one, in reverse order, on `undo`."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def set(self, obj: Any, name: str, value: Any) -> None:
        # object.__setattr__ bypasses DiffusionPipeline.__setattr__, which would rewrite the pipeline config.
        self._saved.append((obj, name, obj.__dict__.get(name, _MISSING)))
        object.__setattr__(obj, name, value)

    def undo(self) -> None:
        while self._saved:
            obj, name, old = self._saved.pop()
            if old is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                object.__setattr__(obj, name, old)

    def __bool__(self) -> bool:
        return bool(self._saved)
