"""Every private name of another library that sr-plugin relies on, in one place.

sr-plugin works with diffusers, torch, para-attn and cache-dit through their public APIs where they have one. Where
they do not (hook order, a pipeline's offload hooks, a transformer's parallel config, an attention processor's
backend, cache-dit's per-model context), the private name is read or written here and nowhere else, each with the
version it was checked against. Widening a version pin is a reading of this file and a run of
`tests/project/test_compat.py`, which fails with a message naming the private name that moved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

#: The versions every name below was checked against (CPU: torch 2.13.0; GPU: torch 2.11.0).
CHECKED_AGAINST: dict[str, str] = {
    "diffusers": "0.42.1",
    "torch": "2.13.0",
    "para_attn": "0.3.38",
    "cache_dit": "1.5.3",
}

# ------------------------------------------------------------------------------ diffusers: hooks (0.42.1)
#: Where `diffusers.hooks.HookRegistry.check_if_exists_or_initialize` keeps a module's registry.
HOOK_REGISTRY_ATTR = "_diffusers_hook"
#: The name of First Block Cache's hook on the first block (diffusers.hooks.first_block_cache).
FBC_LEADER_HOOK = "fbc_leader_block_hook"
#: Name prefixes of the context-parallel split/gather hooks (diffusers.hooks.context_parallel).
CP_HOOK_PREFIXES: tuple[str, ...] = ("cp_input---", "cp_output---")


def hook_state_classes() -> tuple[type, type]:
    """``(BaseState, StateManager)``: a hook's per-context state, as diffusers' own caching hooks keep it (they live
    in ``diffusers.hooks.hooks``, which the package's ``__init__`` does not export)."""
    from diffusers.hooks.hooks import BaseState, StateManager

    return BaseState, StateManager


def mark_stateful(hook: Any) -> Any:
    """Make `HookRegistry.reset_stateful_hooks` (which the pipelines call per call) reset this hook, class or
    instance (`ModelHook._is_stateful`)."""
    hook._is_stateful = True
    return hook


def hook_registry(module: torch.nn.Module) -> Any:
    """The module's `HookRegistry`, or None if none was made (without making one)."""
    return getattr(module, HOOK_REGISTRY_ATTR, None)


def hook_order(registry: Any) -> list[str]:
    """The hook names of a registry, innermost first (`HookRegistry._hook_order`)."""
    return list(getattr(registry, "_hook_order", ()))


def replace_fbc_decision(hook: Any, should_compute: Callable[[torch.Tensor], bool]) -> None:
    """Make First Block Cache's leader hook decide with ``should_compute(residual)`` (its
    `FBCHeadBlockHook._should_compute_remaining_blocks`)."""
    hook._should_compute_remaining_blocks = should_compute


def remove_context_parallel(model: Any) -> None:
    """Undo `model.enable_parallelism(...)`: its split/gather hooks (`remove_context_parallel` with the model's
    `_cp_plan`), then the parallel config on the model and its attention processors."""
    from diffusers.hooks.context_parallel import remove_context_parallel as remove

    remove(model, model._cp_plan)
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = None
    model._parallel_config = None


# --------------------------------------------------------------------- diffusers: models (0.42.1)
def parallel_config(model: torch.nn.Module) -> Any:
    """The `ParallelConfig` `enable_parallelism` set on ``model`` (`_parallel_config`), or None."""
    return getattr(model, "_parallel_config", None)


def cp_mesh(cp_config: Any) -> Any:
    """The device mesh a `ContextParallelConfig` was set up on (`_mesh`)."""
    return cp_config._mesh


def cp_flattened_mesh(cp_config: Any) -> Any:
    """Its flattened mesh (`_flattened_mesh`: all context-parallel ranks as one dimension), or None."""
    return getattr(cp_config, "_flattened_mesh", None)


def attention_backend(processor: Any) -> Any:
    """The attention backend `set_attention_backend` gave this processor (`_attention_backend`), or None."""
    return processor._attention_backend


def set_attention_backend(processor: Any, backend: Any) -> None:
    processor._attention_backend = backend


def takes_attention_backend(processor: Any) -> bool:
    return hasattr(processor, "_attention_backend")


def cache_config(model: torch.nn.Module) -> Any:
    """The cache config `CacheMixin.enable_cache` set (`_cache_config`), or None."""
    return getattr(model, "_cache_config", None)


# ------------------------------------------------------------------- diffusers: pipelines (0.42.1)
def offload_hooks(pipe: Any) -> list[Any]:
    """The hooks `enable_model_cpu_offload` chained over the pipeline's models (`_all_hooks`)."""
    return getattr(pipe, "_all_hooks", [])


def set_offload_hooks(pipe: Any, hooks: list[Any]) -> None:
    pipe._all_hooks = hooks


def offload_device(pipe: Any) -> Any:
    """Where model CPU offload moves each model when it runs (`_offload_device`)."""
    return pipe._offload_device


def cogvideox_rotary_embeddings(
    transformer: torch.nn.Module, vae_scale_factor_spatial: int, height: int, width: int, num_frames: int, device: Any
) -> Any:
    """CogVideoX's 3D rotary embeddings for ``transformer``'s config: the pipeline's own computation (its private
    `_prepare_rotary_positional_embeddings`, which reads ``self.transformer`` and ``self.vae_scale_factor_spatial``
    only), on a view that holds the given ones."""
    from types import SimpleNamespace

    from diffusers import CogVideoXPipeline

    view = SimpleNamespace(transformer=transformer, vae_scale_factor_spatial=vae_scale_factor_spatial)
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(view, height, width, num_frames, device)


@contextlib.contextmanager
def quiet_progress_bar(pipe: Any) -> Iterator[None]:
    """No progress bar for the calls inside the block; the pipeline's own setting (``set_progress_bar_config``,
    kept in ``DiffusionPipeline._progress_bar_config``) comes back after it."""
    had = "_progress_bar_config" in vars(pipe)
    before = vars(pipe).get("_progress_bar_config")
    pipe.set_progress_bar_config(**{**(before or {}), "disable": True})
    try:
        yield
    finally:
        if had:
            pipe._progress_bar_config = before
        else:
            del pipe._progress_bar_config


# ------------------------------------------------------------------------------------ torch (2.13)
def dynamo_supported() -> bool:
    """Whether torch.compile works in this Python and torch build (`torch._dynamo.is_dynamo_supported`)."""
    return bool(torch._dynamo.is_dynamo_supported())


def flatten_mesh(mesh: Any, name: str) -> Any:
    """A multi-dimensional `DeviceMesh` as one dimension (`DeviceMesh._flatten`)."""
    return mesh._flatten(name)


# ------------------------------------------------------------------------------- para-attn (0.3.38)
#: Set on a transformer by `parallelize_transformer` / `apply_cache_on_transformer`.
PARA_ATTN_PARALLELIZED = "_is_parallelized"
PARA_ATTN_CACHED = "_is_cached"


def para_attn_parallelized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, PARA_ATTN_PARALLELIZED, False))


def para_attn_cached(model: torch.nn.Module) -> bool:
    return bool(getattr(model, PARA_ATTN_CACHED, False))


# ------------------------------------------------------------------------------- cache-dit (1.5.3)
#: What `cache_dit.enable_cache` sets on each transformer it caches: its context manager, the names of its
#: block contexts and the keyword arguments they were made with.
CACHE_DIT_ATTRS: tuple[str, str, str] = ("_context_manager", "_context_names", "_context_kwargs")


def cache_dit_context(model: torch.nn.Module) -> tuple[Any, Any, Any]:
    """(manager, context names, context kwargs) cache-dit set on ``model``'s instance, each None if absent."""
    return tuple(vars(model).get(name) for name in CACHE_DIT_ATTRS)  # type: ignore[return-value]
