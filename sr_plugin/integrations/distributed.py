"""Context parallelism: the small transformer parallelized like the large one, and one decision for all ranks.

Under context parallelism every rank of a group runs the same pipeline call on a shard of the sequence. A
decision taken from a rank's local view (its shard, its own float rounding) can differ between ranks; the
ranks then run different models or skip different blocks, and the next collective hangs. So:

- the switching metric and TeaCache's distance are broadcast from the group's first rank before use;
- diffusers' First Block Cache decides from the first block's residual, which is sharded: its decision is
  replaced (on the hook instance) by the same rule on means all-reduced over the group, which is also the
  decision a single process would take.

Supported: diffusers' own context parallelism (`enable_parallelism(config=ContextParallelConfig(...))`, Wan)
and para-attn's (`parallelize_pipe`, CogVideoX). A family whose para-attn adapter is broken says so in its
adapter (`para_attn_refusal`: Wan's fails on diffusers >= 0.35, RoPE returns a tuple there).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import HookRegistry

from .. import compat
from ..instance.events import CallListener
from ..instance.patching import InstancePatches


def identity(value: torch.Tensor) -> torch.Tensor:
    return value


def diffusers_cp_config(model: torch.nn.Module) -> Any:
    config = compat.parallel_config(model)
    return getattr(config, "context_parallel_config", None) if config is not None else None


para_attn_parallelized = compat.para_attn_parallelized


def para_attn_mesh(model: torch.nn.Module) -> Any:
    """The device mesh para-attn parallelized ``model`` on: para-attn keeps it only in the closure of the
    forward it installs, so it is read from there (None if not found)."""
    from torch.distributed.device_mesh import DeviceMesh

    func = getattr(vars(model).get("forward"), "__func__", None)
    for cell in getattr(func, "__closure__", None) or ():
        value = cell.cell_contents
        if (
            isinstance(value, DeviceMesh)
            and value.mesh_dim_names
            and "ulysses" in value.mesh_dim_names
            and "batch" in value.mesh_dim_names
        ):
            return value
    return None


#: The process group of each para-attn mesh, flattened once; an entry goes with its mesh (a new mesh may reuse a
#: freed one's id, and must not get its group).
_GROUPS: dict[int, Any] = {}


def cp_group(model: torch.nn.Module) -> Any:
    """The process group of the ranks that share ``model``'s work, or None if it is not context-parallel."""
    cp = diffusers_cp_config(model)
    if cp is not None and compat.cp_flattened_mesh(cp) is not None:
        return compat.cp_flattened_mesh(cp).get_group()
    if para_attn_parallelized(model):
        mesh = para_attn_mesh(model)
        if mesh is None:
            raise ValueError("the transformer is parallelized by para-attn but its device mesh cannot be read")
        if id(mesh) not in _GROUPS:
            _GROUPS[id(mesh)] = (
                compat.flatten_mesh(mesh, "sr_plugin_cp").get_group() if mesh.ndim > 1 else mesh.get_group()
            )
            weakref.finalize(mesh, _GROUPS.pop, id(mesh), None)
        return _GROUPS[id(mesh)]
    return None


def make_agree(group: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Every rank of ``group`` gets the first rank's value (a broadcast: one small collective per use)."""
    if group is None:
        return identity
    import torch.distributed as dist

    src = dist.get_process_group_ranks(group)[0]

    def agree(value: torch.Tensor) -> torch.Tensor:
        value = value.detach().clone().contiguous()
        dist.broadcast(value, src=src, group=group)
        return value

    return agree


def parallelize_like(
    large: torch.nn.Module, small: Any, para_attn_refusal: str | None = None
) -> Callable[[], None] | None:
    """Give ``small`` the context parallelism ``large`` has, on the same mesh. Returns an undo (None if
    nothing was done); raises a clear error for combinations known to be broken or that cannot be matched
    (``para_attn_refusal``: the family's reason para-attn cannot be used, from its adapter).
    Collective: every rank must call it (as every rank calls `sr_plugin.apply`)."""
    if para_attn_refusal is not None and para_attn_parallelized(large):
        raise ValueError(para_attn_refusal)
    cp = diffusers_cp_config(large)
    if cp is not None:
        if getattr(compat.parallel_config(large), "tensor_parallel_config", None) is not None:
            raise ValueError("tensor parallelism on the large transformer is not supported by sr_plugin")
        if diffusers_cp_config(small) is not None:
            if compat.cp_mesh(diffusers_cp_config(small)) is not compat.cp_mesh(cp):
                raise ValueError("the small transformer is context-parallel on another mesh than the large one")
            return None
        from diffusers import ContextParallelConfig

        public = {f.name: getattr(cp, f.name) for f in dataclasses.fields(cp) if f.init and not f.name.startswith("_")}
        small.enable_parallelism(config=ContextParallelConfig(**{**public, "mesh": compat.cp_mesh(cp)}))
        return lambda: compat.remove_context_parallel(small)
    if para_attn_parallelized(large):
        if para_attn_parallelized(small):
            return None
        mesh = para_attn_mesh(large)
        if mesh is None:
            raise ValueError(
                "the large transformer is parallelized by para-attn, but its mesh cannot be read: parallelize the "
                "small one yourself first, with para_attn.context_parallel.diffusers_adapters."
                "parallelize_transformer(small, mesh=<the same mesh>), then call sr_plugin.apply"
            )
        from para_attn.context_parallel.diffusers_adapters import parallelize_transformer

        saved = InstancePatches()  # what para-attn may overwrite on the instances (forwards), as it is now
        for module in small.modules():
            saved.record(module, "forward")
        saved.record(small, compat.PARA_ATTN_PARALLELIZED)
        parallelize_transformer(small, mesh=mesh)
        return saved.undo
    return None


def prepare_parallel_call(model: torch.nn.Module, blocks: Any, group: Any) -> None:
    """Before each call of a context-parallel pipeline, for each model in play (after every cache was attached):
    the split/gather hooks outermost, and diffusers' First Block Cache deciding from group-wide means (so every
    rank skips the same blocks). Idempotent."""
    keep_context_parallel_outermost(model)
    agree_first_block_cache(model, blocks, group)


def agree_first_block_cache(model: torch.nn.Module, blocks: Any, group: Any) -> None:
    """Make diffusers' First Block Cache on ``model`` decide from group-wide means (idempotent)."""
    if group is None or len(blocks) == 0:
        return
    registry = compat.hook_registry(blocks[0])
    hook = registry.get_hook(compat.FBC_LEADER_HOOK) if registry is not None else None
    if hook is None or getattr(hook, "_sr_plugin_agreed", None) is group:
        return
    import torch.distributed as dist

    @torch.compiler.disable
    def should_compute(residual: torch.Tensor) -> bool:
        # diffusers' rule (compute when mean|r - r_prev| / mean|r_prev| > threshold), with each mean taken over
        # the whole sequence: the shards are of equal size, so the group sum is proportional to it.
        prev = hook.state_manager.get_state().head_block_residual
        if prev is None:
            return True
        sums = torch.stack([(residual - prev).abs().mean(), prev.abs().mean()]).float()
        dist.all_reduce(sums, group=group)
        return bool((sums[0] / sums[1]).item() > hook.threshold)

    compat.replace_fbc_decision(hook, should_compute)
    hook._sr_plugin_agreed = group


def keep_context_parallel_outermost(model: torch.nn.Module) -> None:
    """Put diffusers' context-parallel split/gather hooks back on top of every other hook of each module.

    They define what a module computes on (its shard of the sequence). A cache registered after them on the
    same block (TeaCache, First Block Cache) would otherwise see the unsplit input and return the wrong shape.
    The chain is rebuilt by removing hooks from the outermost down (diffusers' removal of an inner hook would
    bypass an outer `new_forward` hook) and registering them again, the split/gather ones last. Idempotent.
    """
    for module in model.modules():
        registry = compat.hook_registry(module)
        order = compat.hook_order(registry)
        cp = [name for name in order if name.startswith(compat.CP_HOOK_PREFIXES)]
        if not cp or order[-len(cp) :] == cp:
            continue
        hooks = [(name, registry.hooks[name]) for name in order]
        for name, _ in reversed(hooks):
            registry.remove_hook(name, recurse=False)
        for name, hook in [h for h in hooks if h[0] not in cp] + [h for h in hooks if h[0] in cp]:
            registry.register_hook(hook, name)
        HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()


class ContextParallelCall(CallListener):
    """A standard listener of every pipeline's call tracker (`sr_plugin.pipeline.calls`): at the start of each call,
    the context-parallel group of ``pipe.transformer`` (None on one process) and the agreement of its ranks on the
    tracker, for every decision taken from a local view (the switch's metric, the caches'); once the other listeners
    began, each model in play set up for a parallel call (`prepare_parallel_call`)."""

    def __init__(self) -> None:
        self._group: Any = None

    def begin(self, calls: Any) -> None:
        group = cp_group(calls.pipe.transformer)
        if group is not self._group or calls.group is not group:
            self._group = group
            calls.group, calls.agree = group, make_agree(group)

    def prepare(self, calls: Any) -> None:
        if calls.group is None:
            return
        for model in calls.in_play:
            prepare_parallel_call(model, calls.blocks(model), calls.group)
