"""First Block Cache with the switch: diffusers' (through accelerate or enabled by hand) and para-attn's."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import FirstBlockCacheConfig
from pipeline_helpers import CallLog, run

import sr_plugin


@pytest.mark.parametrize("order", ["cache-then-apply", "apply-then-cache"])
def test_cache_enabled_by_hand_on_the_large_model_is_given_to_the_small_one(pair, family, order):
    pipe, small = pair
    if order == "cache-then-apply":
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
        handle = sr_plugin.apply(pipe, small, switch_step=4)
    else:
        handle = sr_plugin.apply(pipe, small, switch_step=4)
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    seen = []

    def look(p, i, t, kwargs):  # the small model runs from step 4: its cache, seen during the call
        if i == 5:
            seen.append(small._cache_config)
        return kwargs

    out = run(pipe, family, callback_on_step_end=look)
    assert isinstance(seen[0], FirstBlockCacheConfig) and seen[0].threshold == 0.2
    assert seen[0] is not pipe.transformer._cache_config
    assert small._cache_config is None  # off between calls (a pipeline sharing the small model is unaffected)
    assert torch.equal(run(pipe, family), out)  # no state carried from one call to the next
    handle.remove()
    assert small._cache_config is None


@pytest.fixture
def para_attn_pipe(monkeypatch):
    """A tiny Wan pipeline and a small model of the large one's shape (a perturbed copy), so that a shared
    para-attn context *could* hand the large model's residual to the small one. para-attn wraps the pipeline
    class's __call__ once per class (later calls keep the first threshold): restored after each test."""
    from sr_plugin.lab.tiny import tiny_wan

    pipe, _ = tiny_wan()
    monkeypatch.setattr(type(pipe), "__call__", type(pipe).__call__)
    monkeypatch.setattr(type(pipe), "_is_cached", False, raising=False)
    small = copy.deepcopy(pipe.transformer)
    torch.manual_seed(5)
    for p in small.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    return pipe, small


def test_para_attn_threshold_zero_reproduces_the_switch_exactly(para_attn_pipe):
    from para_attn.first_block_cache.diffusers_adapters import apply_cache_on_pipe

    pipe, small = para_attn_pipe
    handle = sr_plugin.apply(pipe, small, switch_step=4)
    expected = run(pipe, "wan")
    apply_cache_on_pipe(pipe, residual_diff_threshold=0.0)
    assert torch.equal(run(pipe, "wan"), expected)
    assert getattr(small, "_is_cached", False)  # the small model got para-attn's cache too
    handle.remove()
    assert not getattr(small, "_is_cached", False) and "forward" not in vars(small)


def test_para_attn_small_model_runs_in_its_own_cache_context(para_attn_pipe):
    """Threshold 1e9 reuses a residual whenever one exists. The large model reuses from its second step on;
    the small model's first call of each branch finds no residual of its own, so it runs all its blocks."""
    from para_attn.first_block_cache.diffusers_adapters import apply_cache_on_pipe

    pipe, small = para_attn_pipe
    sr_plugin.apply(pipe, small, switch_step=4)
    apply_cache_on_pipe(pipe, residual_diff_threshold=1e9)
    log = CallLog(large=pipe.transformer.blocks[1], small=small.blocks[1])
    run(pipe, "wan")
    log.close()
    # blocks past the first ran: the large model's first step (cond, uncond), the small model's first step
    assert log.calls == ["large", "large", "small", "small"]


def test_a_mirrored_cache_does_not_reach_another_pipeline_sharing_the_small_model(family):
    """Pipeline b's user enabled First Block Cache; pipeline a, sharing the small model, has none: a's calls
    equal a fresh a's, before and after b's."""
    from sr_plugin.lab.tiny import tiny_pair

    fresh, fresh_small = tiny_pair(family)
    sr_plugin.apply(fresh, fresh_small, switch_step=2)
    expected = run(fresh, family)
    a, small = tiny_pair(family)
    b, _ = tiny_pair(family, seed=1)
    sr_plugin.apply(a, small, switch_step=2)
    sr_plugin.apply(b, small, switch_step=2)
    b.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.3))
    run(b, family)
    assert torch.equal(run(a, family), expected)
