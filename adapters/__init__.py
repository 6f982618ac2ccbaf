"""One adapter per pipeline family. A family is one module whose adapter class is decorated with
`register_family`; the two shipped ones are imported here so that they register."""

from __future__ import annotations

from typing import Any

# each registers itself on import; Wan first, as the docs and the error messages list them
from . import wan  # noqa: F401

# isort: split
from . import cogvideox  # noqa: F401

# isort: split
from .base import FamilyAdapter, Handoff, register_family, registered_families, unregister_family


def family(key: str) -> FamilyAdapter:
    """The registered family with this key, or a clear error listing the known ones."""
    for adapter in registered_families():
        if adapter.key == key:
            return adapter
    raise ValueError(f"unknown family {key!r}; known: {', '.join(family_keys())}")


def family_keys() -> tuple[str, ...]:
    return tuple(a.key for a in registered_families())


def supported_pipelines() -> list[str]:
    return [n for a in registered_families() for n in a.pipeline_class_names]


def adapter_for(pipe: Any) -> FamilyAdapter:
    """The adapter serving this pipeline instance, or a clear error naming the supported classes."""
    for adapter in registered_families():
        if adapter.serves(pipe):
            return adapter
    raise TypeError(
        f"sr_plugin does not support {type(pipe).__name__}; supported pipelines: {', '.join(supported_pipelines())}"
    )


__all__ = [
    "FamilyAdapter",
    "Handoff",
    "adapter_for",
    "family",
    "family_keys",
    "register_family",
    "registered_families",
    "supported_pipelines",
    "unregister_family",
]
