"""One adapter per pipeline family; adding a family means adding a module here and listing it below."""

from __future__ import annotations

from typing import Any

from .base import FamilyAdapter, Handoff
from .cogvideox import CogVideoXAdapter
from .wan import WanAdapter

ADAPTERS: tuple[FamilyAdapter, ...] = (WanAdapter(), CogVideoXAdapter())


def supported_pipelines() -> list[str]:
    return [n for a in ADAPTERS for n in a.pipeline_class_names]


def adapter_for(pipe: Any) -> FamilyAdapter:
    """The adapter serving this pipeline instance, or a clear error naming the supported classes."""
    for adapter in ADAPTERS:
        if adapter.serves(pipe):
            return adapter
    raise TypeError(
        f"sr_plugin does not support {type(pipe).__name__}; supported pipelines: {', '.join(supported_pipelines())}"
    )


__all__ = ["ADAPTERS", "FamilyAdapter", "Handoff", "adapter_for", "supported_pipelines"]
