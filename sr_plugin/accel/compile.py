"""Regional torch.compile of a transformer's blocks, with every hook kept outside the compiled regions.

diffusers' ``compile_repeated_blocks`` (Wan) compiles each block's ``_call_impl``, which then also traces
any hook later put on the block (caches whose Python decisions would break or re-specialise the graph), and
CogVideoX declares no repeated blocks at all. So each block's own ``forward`` is compiled, as an instance
attribute, before any hook wraps it: the same regions (one block each; blocks of one class share the
compiled code), with the caching hooks and the switch logic outside.
"""

from __future__ import annotations

from typing import Any

import torch

from ..instance.patching import InstancePatches
from .. import compat

#: Defaults: the issue's regional compile is fullgraph (one graph per block); static shapes, so that the
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
