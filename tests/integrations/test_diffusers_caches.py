"""Every cache diffusers ships (`CacheMixin.enable_cache`), enabled by hand on the large model, runs on the small
model too while it runs, with hooks and state of its own: the output equals the plain pipeline with the transformer
swapped by hand at the same steps, each model carrying the same cache (the leaving one's state reset at each
boundary, as the switch does), in a hand-over and in a sandwich that returns to the large model. Built the way
diffusers' own pipeline tests build the pipelines (`test_diffusers_style`)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    SeaCacheConfig,
    TaylorSeerCacheConfig,
    TextKVCacheConfig,
)
from diffusers.hooks import HookRegistry
from test_diffusers_style import cogvideox, inputs, wan

import sr_plugin

STEPS = 10


def config(name: str, pipe, family: str):
    """One configuration of each cache, set to act within a few steps of the tiny pipelines."""
    timestep = lambda: pipe.current_timestep  # noqa: E731  (the pipeline's, whichever model runs)
    return {
        "first block cache": lambda: FirstBlockCacheConfig(threshold=0.5),
        "pyramid attention broadcast": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(0, 1000),
            current_timestep_callback=timestep,
        ),
        "fastercache": lambda: FasterCacheConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1000),
            unconditional_batch_skip_range=2,
            unconditional_batch_timestep_skip_range=(-1, 1000),
            tensor_format="BFCHW",
            current_timestep_callback=timestep,
        ),
        "magcache": lambda: MagCacheConfig(
            threshold=0.5, num_inference_steps=STEPS, mag_ratios=[1.0] + [0.99] * (STEPS - 1)
        ),
        "taylorseer": lambda: TaylorSeerCacheConfig(
            cache_interval=2,
            disable_cache_before_step=1,
            cache_identifiers=[r"blocks\.\d+", r"transformer_blocks\.\d+"],
        ),
        "seacache": lambda: SeaCacheConfig(threshold=0.5),
        "textkv": lambda: TextKVCacheConfig(),
    }[name]()


#: The configurations whose small-model copy is the user's own (its numbers are fitted to each model).
OWN_SMALL_CONFIG = {"magcache"}
#: Where diffusers' cache does not run, or does nothing, on a family's plain pipeline (nothing sr-plugin can carry):
#: FasterCache fails on Wan's CFG as two calls (IndexError), SeaCache runs "fail-open" on CogVideoX (the pipeline
#: passes no step index or sigma to its cache context), TextKV reuses exactly (no output changes).
RUNS_NOT = {("wan", "fastercache")}
CHANGES_NOTHING = {("cogvideox", "seacache"), ("wan", "textkv"), ("cogvideox", "textkv")}
NAMES = [
    "first block cache",
    "pyramid attention broadcast",
    "fastercache",
    "magcache",
    "taylorseer",
    "seacache",
    "textkv",
]
SCHEDULES = {"hand-over": ["large"] * 4 + ["small"] * 6, "sandwich": ["large"] * 3 + ["small"] * 4 + ["large"] * 3}


def build(family: str):
    """A pipeline and a small model of the same config with other weights (the same latent space)."""
    pipe = wan() if family == "wan" else cogvideox(layers=2)
    small = copy.deepcopy(pipe.transformer)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in small.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return pipe, small


def by_hand(pipe, small, roles: list[str]):
    """The reference: the plain pipeline, its transformer swapped at the step ends where ``roles`` change, the
    leaving model's cache state reset there."""
    large = pipe.transformer
    models = {"large": large, "small": small}

    def swap(p, i, t, kwargs):
        if i + 1 < len(roles) and roles[i + 1] != roles[i]:
            HookRegistry.check_if_exists_or_initialize(models[roles[i]]).reset_stateful_hooks()
            p.transformer = models[roles[i + 1]]
        return kwargs

    try:
        return pipe(**inputs(pipe, num_inference_steps=STEPS, callback_on_step_end=swap)).frames
    finally:
        pipe.transformer = large


def schedule_of(roles: list[str]) -> str:
    parts = []
    for j in range(1, len(roles) + 1):
        if j == len(roles) or roles[j] != roles[j - 1]:
            parts.append(roles[j - 1] if j == len(roles) else f"{roles[j - 1]}:{j}")
    return ",".join(parts)


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("order", SCHEDULES)
def test_a_diffusers_cache_runs_on_the_small_model_with_its_own_state(family, name, order):
    if (family, name) in RUNS_NOT:
        pytest.skip(f"diffusers' {name} does not run on a plain {family} pipeline")
    roles = SCHEDULES[order]
    pipe, small = build(family)
    reference_pipe, reference_small = build(family)
    reference_pipe.transformer.enable_cache(config(name, reference_pipe, family))
    reference_small.enable_cache(config(name, reference_pipe, family))
    expected = by_hand(reference_pipe, reference_small, roles)

    large = pipe.transformer
    large.enable_cache(config(name, pipe, family))
    own = {"small_cache_config": config(name, pipe, family)} if name in OWN_SMALL_CONFIG else {}
    handle = sr_plugin.apply(pipe, small, schedule=schedule_of(roles), **own)
    seen = []

    def look(p, i, t, kwargs):  # the small model carries a cache on its steps, and it is its own
        if roles[i] == "small":
            seen.append(small.is_cache_enabled and small._cache_config is not large._cache_config)
        return kwargs

    out = pipe(**inputs(pipe, num_inference_steps=STEPS, callback_on_step_end=look)).frames
    assert torch.equal(out, expected)
    assert [r.model for r in handle.trace] == roles and seen and all(seen)
    assert not small.is_cache_enabled  # taken off when the call ended
    if (family, name) not in CHANGES_NOTHING:  # it acted on the small model: without it the video differs
        plain_small = copy.deepcopy(small)
        assert not torch.equal(by_hand(reference_pipe, plain_small, roles), expected)
    handle.remove()
    assert not small.is_cache_enabled and large.is_cache_enabled


def test_a_cache_fitted_to_the_large_model_is_refused_without_the_small_models_own():
    pipe, small = build("wan")
    pipe.transformer.enable_cache(config("magcache", pipe, "wan"))
    with pytest.raises(
        ValueError,
        match=r"MagCacheConfig is not reused on the small model \(its mag_ratios were "
        r"fitted.*small_cache_config=MagCacheConfig",
    ):
        sr_plugin.apply(pipe, small, switch_step=3)
    pipe.transformer.disable_cache()
    handle = sr_plugin.apply(pipe, small, switch_step=3)  # enabled after apply: refused at the call, before step 0
    pipe.transformer.enable_cache(config("magcache", pipe, "wan"))
    with pytest.raises(ValueError, match="small_cache_config"):
        pipe(**inputs(pipe, num_inference_steps=STEPS))
    assert handle.trace == []
    handle.remove()
    with pytest.raises(TypeError, match="small_cache_config must be one of diffusers' cache configurations"):
        sr_plugin.apply(pipe, small, small_cache_config={"threshold": 0.1})


def test_enabling_and_disabling_while_applied_takes_effect_at_the_next_call():
    pipe, small = build("wan")
    handle = sr_plugin.apply(pipe, small, switch_step=3)
    plain = pipe(**inputs(pipe, num_inference_steps=STEPS)).frames
    pipe.transformer.enable_cache(config("first block cache", pipe, "wan"))
    cached = pipe(**inputs(pipe, num_inference_steps=STEPS)).frames
    assert not torch.equal(cached, plain)
    pipe.transformer.disable_cache()
    assert torch.equal(pipe(**inputs(pipe, num_inference_steps=STEPS)).frames, plain)
    handle.remove()
