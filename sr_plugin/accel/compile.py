"""Regional torch.compile of a transformer's blocks, with every hook kept outside the compiled regions.

diffusers' ``compile_repeated_blocks`` (Wan) compiles each block's ``_call_impl``, which then also traces
any hook later put on the block (caches whose Python decisions would break or re-specialise the graph), and
CogVideoX declares no repeated blocks at all. So each block's own ``forward`` is compiled, as an instance
attribute, before any hook wraps it: the same regions (one block each; blocks of one class share the
compiled code), with the caching hooks and the switch logic outside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .. import compat
from ..instance.patching import InstancePatches
from .registry import Acceleration, register_acceleration

if TYPE_CHECKING:
    from . import Accelerations

#: Defaults: regional compile is fullgraph (one graph per block); static shapes, so that the
#: large and the small model each get their own graph instead of one dynamic-shape graph after a recompile.
DEFAULT_OPTIONS: dict[str, Any] = {"fullgraph": True, "dynamic": False}


def check_compilable(model: torch.nn.Module, blocks: Any, role: str) -> None:
    """Raise a clear error, before anything changes, if these blocks cannot be compiled this way."""
    if not compat.dynamo_supported():
        raise RuntimeError("torch.compile is not supported in this Python/torch build; drop compile=")
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"the {role} {type(model).__name__} has no transformer blocks to compile")
    for i, block in enumerate(blocks):
        if "forward" in vars(block) or compat.hook_registry(block) is not None and compat.hook_registry(block).hooks:
            raise ValueError(
                f"block {i} of the {role} {type(model).__name__} is already wrapped (compiled, or hooked by a "
                "cache): request compile in the same sr_plugin.accelerate call as the caches, or before them"
            )


def compile_blocks(blocks: Any, options: dict[str, Any]) -> InstancePatches:
    """Compile every block's forward (lazily: the first call compiles). Undo the returned patches to revert."""
    patches = InstancePatches()
    for block in blocks:
        patches.set(block, "forward", torch.compile(block.forward, **options))
    return patches


@dataclass
class CompileConfig:
    """Regional torch.compile of both transformers' blocks: ``options`` for `torch.compile` over the defaults
    (fullgraph, static shapes)."""

    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.options, dict):
            raise TypeError(f"CompileConfig options must be a dict of torch.compile options, got {self.options!r}")


@register_acceleration
class Compile(Acceleration):
    """Regional torch.compile of the blocks (fullgraph and static shapes by default)."""

    keyword = "compile"
    config_types = (CompileConfig,)
    order = 0

    def __init__(self, config: CompileConfig) -> None:
        super().__init__(config)
        self.options = {**DEFAULT_OPTIONS, **config.options}
        self._patches: dict[str, InstancePatches] = {}

    @classmethod
    def from_keyword(cls, value: Any) -> Compile | None:
        if value is None or value is False:
            return None
        if not isinstance(value, (bool, dict)):
            raise TypeError(f"compile must be True, False, None or a dict of torch.compile options, got {value!r}")
        return cls(CompileConfig(dict(value) if isinstance(value, dict) else {}))

    def adjust(self, others: dict[str, Acceleration]) -> None:
        if any(getattr(o, "breaks_graphs", False) for o in others.values()):
            self.options["fullgraph"] = False  # e.g. PAB's per-branch decision: a graph break inside each block

    def check(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        check_compilable(model, ctx.adapter.blocks(model), role)

    def attach(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        self._patches[role] = compile_blocks(ctx.adapter.blocks(model), self.options)

    def detach(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        patches = self._patches.pop(role, None)
        if patches is not None:
            patches.undo()
