"""Instance attribute patches that can be undone exactly (never classes: other instances stay untouched)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from .. import compat

_MISSING = object()


class InstancePatches:
    """Sets attributes on object instances and restores each one, in reverse order, on `undo`."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def set(self, obj: Any, name: str, value: Any) -> None:
        # object.__setattr__ bypasses DiffusionPipeline.__setattr__, which would rewrite the pipeline config.
        self._saved.append((obj, name, obj.__dict__.get(name, _MISSING)))
        object.__setattr__(obj, name, value)

    def record(self, obj: Any, name: str) -> None:
        """Remember ``obj.name`` as it is now (or its absence), for `undo` after someone else changes it."""
        self._saved.append((obj, name, obj.__dict__.get(name, _MISSING)))

    def undo(self) -> None:
        while self._saved:
            obj, name, old = self._saved.pop()
            if old is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                object.__setattr__(obj, name, old)

    def __bool__(self) -> bool:
        return bool(self._saved)


class Rollback:
    """The undo of each installation step done so far; `run` undoes them in reverse when a later step fails,
    so that `apply` and `accelerate` are all or nothing."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], Any]] = []

    def add(self, undo: Callable[[], Any]) -> None:
        self._steps.append(undo)

    def run(self) -> None:
        while self._steps:
            undo = self._steps.pop()
            with contextlib.suppress(Exception):  # keep undoing: the error that started the rollback is reported
                undo()


def drop_hook_residue_at(module: Any, forward: bool = True, registry: bool = True) -> None:
    """Undo what diffusers' hook removal leaves on ``module``: an instance ``forward`` that is just the class's
    own method bound to the module, and (with ``registry``) an empty hook registry. Both behave like nothing at
    all, but they are not "exactly as before" (and the first hides the class forward from compilation)."""
    bound = vars(module).get("forward")
    if (
        forward
        and getattr(bound, "__func__", None) is type(module).forward
        and getattr(bound, "__self__", None) is module
    ):
        delattr(module, "forward")
    hooks = vars(module).get(compat.HOOK_REGISTRY_ATTR)
    if registry and hooks is not None and not hooks.hooks:
        delattr(module, compat.HOOK_REGISTRY_ATTR)


def drop_hook_residue(root: Any) -> None:
    """`drop_hook_residue_at` on ``root`` and every submodule."""
    for module in root.modules():
        drop_hook_residue_at(module)
