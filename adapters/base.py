"""What every pipeline family must tell the core (`FamilyAdapter`: its facets, in `facets.py`), and the registry of
families."""

from __future__ import annotations

from typing import Any

from .facets import Blocks, Handover, Identity, NoiseLevels, TeaCacheInputs
from .handoff import Handoff

#: The registered families by key, in registration order (`register_family`).
_REGISTRY: dict[str, FamilyAdapter] = {}


def missing_members(cls: type[FamilyAdapter]) -> list[str]:
    """The required members ``cls`` does not write, facet by facet: the switch reads x0 through `denoised`; the
    accelerations find the blocks (`blocks` or `block_lists`), the attention layers PAB may reuse and where
    TeaCache reads its input. (`teacache_modulated_input` is needed by TeaCache's calibration only, and says so
    when it is missing.)"""
    missing = []
    for facet in FACETS:
        for name in facet.required:
            value = getattr(cls, name, None)
            if not value or callable(value) and value is getattr(facet, name, None):
                missing.append(name)
        if facet is Blocks and cls.blocks is Blocks.blocks and cls.block_lists is Blocks.block_lists:
            missing.append("blocks or block_lists")
    return missing


def register_family(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Class decorator: make a family known to `apply`, `accelerate`, the CLI and the tests. A family is its
    adapter module; registering the same key again replaces the earlier adapter. A family that does not write
    every required member is refused here, not at its first call."""
    missing = missing_members(cls)
    if missing:
        raise TypeError(f"{cls.__name__} cannot be registered: it must define {', '.join(missing)} (see FamilyAdapter)")
    adapter = cls()
    _REGISTRY[adapter.key] = adapter
    return cls


def unregister_family(key: str) -> None:
    _REGISTRY.pop(key, None)


def registered_families() -> tuple[FamilyAdapter, ...]:
    return tuple(_REGISTRY.values())


class FamilyAdapter(Identity, Handover, NoiseLevels, Blocks, TeaCacheInputs):
    """One pipeline family (Wan, CogVideoX): every facet the core reads. Subclasses hold everything family-specific
    and are registered with `register_family`."""


#: The facets, in the order their required members are checked.
FACETS: tuple[Any, ...] = (Identity, Handover, NoiseLevels, Blocks, TeaCacheInputs)

__all__ = [
    "FACETS",
    "FamilyAdapter",
    "Handoff",
    "missing_members",
    "register_family",
    "registered_families",
    "unregister_family",
]
