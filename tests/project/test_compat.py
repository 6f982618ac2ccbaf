"""Every private name of another library that sr_plugin.compat relies on is still where it was when checked. A
failure names the private name and the versions: widening a version pin starts here, and at sr_plugin/compat.py."""

from __future__ import annotations

import importlib
import inspect
from importlib import metadata

import pytest
import torch

from sr_plugin import compat
from sr_plugin.lab.tiny import tiny_pair


def moved(name: str, library: str) -> str:
    installed = metadata.version(library.replace("_", "-"))
    return (
        f"{name} of {library} (checked against {compat.CHECKED_AGAINST[library.replace('-', '_')]}) is not "
        f"where sr_plugin.compat reads it in {library} {installed}: update sr_plugin/compat.py"
    )


def source(module: str) -> str:
    return inspect.getsource(importlib.import_module(module))


def test_diffusers_hook_registry_and_hook_order():
    from diffusers.hooks import HookRegistry, ModelHook

    module = torch.nn.Linear(2, 2)
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(ModelHook(), "probe")
    assert compat.hook_registry(module) is registry, moved("ModelMixin._diffusers_hook", "diffusers")
    assert compat.hook_order(registry) == ["probe"], moved("HookRegistry._hook_order", "diffusers")


def test_diffusers_first_block_cache_and_context_parallel_names():
    from diffusers.hooks import context_parallel, first_block_cache

    assert first_block_cache._FBC_LEADER_BLOCK_HOOK == compat.FBC_LEADER_HOOK, moved(
        "_FBC_LEADER_BLOCK_HOOK", "diffusers"
    )
    assert callable(getattr(first_block_cache.FBCHeadBlockHook, "_should_compute_remaining_blocks", None)), moved(
        "FBCHeadBlockHook._should_compute_remaining_blocks", "diffusers"
    )
    templates = (
        context_parallel._CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE,
        context_parallel._CONTEXT_PARALLEL_OUTPUT_HOOK_TEMPLATE,
    )
    assert tuple(t.format("") for t in templates) == compat.CP_HOOK_PREFIXES, moved("cp hook names", "diffusers")
    assert "plan" in inspect.signature(context_parallel.remove_context_parallel).parameters, moved(
        "remove_context_parallel(module, plan)", "diffusers"
    )


def test_diffusers_model_and_processor_attributes():
    from diffusers import ContextParallelConfig, FirstBlockCacheConfig

    pipe, _ = tiny_pair("wan")
    model = pipe.transformer
    assert hasattr(type(model), "_cp_plan") and hasattr(model, "_parallel_config"), moved(
        "ModelMixin._cp_plan / _parallel_config", "diffusers"
    )
    assert compat.parallel_config(model) is None
    fields = {f.name for f in __import__("dataclasses").fields(ContextParallelConfig)}
    assert {"_mesh", "_flattened_mesh"} <= fields, moved("ContextParallelConfig._mesh / _flattened_mesh", "diffusers")
    processors = [m.processor for m in model.modules() if getattr(m, "processor", None) is not None]
    assert processors and all(compat.takes_attention_backend(p) for p in processors), moved(
        "AttentionProcessor._attention_backend", "diffusers"
    )
    model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    try:
        assert isinstance(compat.cache_config(model), FirstBlockCacheConfig), moved(
            "CacheMixin._cache_config", "diffusers"
        )
    finally:
        model.disable_cache()


def test_diffusers_pipeline_offload_hooks_and_cogvideox_rotary():
    from diffusers import CogVideoXPipeline, DiffusionPipeline

    offload = inspect.getsource(DiffusionPipeline.enable_model_cpu_offload)
    assert "self._all_hooks" in offload and "self._offload_device" in offload, moved(
        "DiffusionPipeline._all_hooks / _offload_device", "diffusers"
    )
    params = list(inspect.signature(CogVideoXPipeline._prepare_rotary_positional_embeddings).parameters)
    assert params[:5] == ["self", "height", "width", "num_frames", "device"], moved(
        "CogVideoXPipeline._prepare_rotary_positional_embeddings", "diffusers"
    )
    pipe, small = tiny_pair("cogvideox")
    emb = compat.cogvideox_rotary_embeddings(pipe.transformer, pipe.vae_scale_factor_spatial, 64, 64, 3, "cpu")
    assert isinstance(emb, tuple) and emb[0].shape[-1] == pipe.transformer.config.attention_head_dim


def test_torch_device_mesh_flatten():
    from torch.distributed.device_mesh import DeviceMesh

    assert callable(getattr(DeviceMesh, "_flatten", None)), moved("DeviceMesh._flatten", "torch")


def test_para_attn_markers():
    pytest.importorskip("para_attn")
    assert f"transformer.{compat.PARA_ATTN_CACHED} = True" in source(
        "para_attn.first_block_cache.diffusers_adapters.cogvideox"
    ), moved("_is_cached", "para_attn")
    assert compat.PARA_ATTN_PARALLELIZED in source("para_attn.context_parallel.diffusers_adapters.cogvideox"), moved(
        "_is_parallelized", "para_attn"
    )


def test_cache_dit_context_attributes():
    pytest.importorskip("cache_dit")
    text = source("cache_dit.caching.cache_adapters.cache_adapter")
    assert all(name in text for name in compat.CACHE_DIT_ATTRS), moved("_context_manager/_names/_kwargs", "cache_dit")


def test_diffusers_hook_state_and_the_stateful_flag():
    from diffusers.hooks import HookRegistry, ModelHook

    BaseState, StateManager = compat.hook_state_classes()

    class Count(BaseState):
        def __init__(self):
            self.n = 0

        def reset(self):
            self.n = 0

    class Probe(ModelHook):
        def __init__(self):
            super().__init__()
            self.state_manager = StateManager(Count)
            self.resets = 0

        def reset_state(self, module):
            self.resets += 1
            return module

    module, hook = torch.nn.Linear(2, 2), Probe()
    HookRegistry.check_if_exists_or_initialize(module).register_hook(compat.mark_stateful(hook), "probe")
    compat.hook_registry(module).reset_stateful_hooks()
    assert hook.resets == 1, moved("ModelHook._is_stateful (reset_stateful_hooks)", "diffusers")
    assert compat.dynamo_supported() in (True, False), moved("torch._dynamo.is_dynamo_supported", "torch")
