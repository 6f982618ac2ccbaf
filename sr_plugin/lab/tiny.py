"""Tiny pipelines built in code with random weights: no download, seconds on a CPU.

Shared by the tests and the benchmarks (the demo runs the trained families of `sr_plugin.lab.trained`). Each
family's tool description builds its own (`FamilyTools.build_tiny`, `sr_plugin.lab.family_tools`); this module
holds what they share (a tokenizer built with `tokenizers`) and looks families up in the registry. A builder returns
``(pipe, small_transformer)``: a real diffusers pipeline whose transformer is a tiny "large" model, and a tinier
"small" model of the same family. Every module is in eval mode (T5's dropout would otherwise make two
identical calls differ).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ..adapters import family, registered_families
from ..adapters.cogvideox import published_scheduler as cogvideox_scheduler  # noqa: F401  (kept import path)
from .family_tools import (  # noqa: F401
    eval_all,
    has_tiny,
    tiny_cogvideox_transformer,
    tiny_tokenizer,
    tiny_wan_transformer,
    tools_for,
)


def tiny_families() -> tuple[str, ...]:
    """Keys of the registered families that build a tiny pipeline, in registration order."""
    return tuple(a.key for a in registered_families() if has_tiny(tools_for(a.key)))


#: The families with a tiny pipeline when this module was imported (tests parametrize over these).
FAMILIES = tiny_families()


class _TinyCalls(Mapping):
    """``TINY_CALL[key]``: the call arguments of a family's tiny pipeline, read from the registry."""

    def __getitem__(self, key: str) -> dict[str, Any]:
        family(key)  # a clear error for an unknown family
        return dict(tools_for(key).tiny_call)

    def __iter__(self) -> Iterator[str]:
        return iter(tiny_families())

    def __len__(self) -> int:
        return len(tiny_families())


#: Call arguments that keep the tiny runs small, per family key.
TINY_CALL: Mapping[str, dict[str, Any]] = _TinyCalls()


def tiny_pair(key: str, seed: int = 0) -> tuple[Any, Any]:
    """``(pipe, small)`` for a registered family with a tiny pipeline (`FamilyTools.build_tiny`)."""
    family(key)  # a clear error for an unknown family
    return tools_for(key).build_tiny(seed)


def tiny_wan(seed: int = 0) -> tuple[Any, Any]:
    return tiny_pair("wan", seed)


def tiny_cogvideox(seed: int = 0) -> tuple[Any, Any]:
    return tiny_pair("cogvideox", seed)
