"""cache-dit (DBCache, TaylorSeer) enabled by the user with `cache_dit.enable_cache(pipe, ...)`, before or after
`sr_plugin.apply`: the small model gets the cache too, with its own context made afresh at the switch."""

from __future__ import annotations

import logging

import pytest
import torch
from pipeline_helpers import STEPS, run

import sr_plugin
from sr_plugin.lab.tiny import tiny_pair

cache_dit = pytest.importorskip("cache_dit")
logging.getLogger("cache_dit").setLevel(logging.ERROR)

SWITCH = 4


@pytest.fixture(autouse=True)
def restore_pipeline_classes():
    """cache-dit patches the pipeline *class*'s ``__call__``: a failing test must not leave it to the next."""
    from diffusers import CogVideoXPipeline, WanPipeline

    saved = {cls: dict(vars(cls)) for cls in (WanPipeline, CogVideoXPipeline)}
    yield
    for cls, before in saved.items():
        for name in [n for n in vars(cls) if n not in before]:
            delattr(cls, name)
        for name in ("__call__",):
            if vars(cls)[name] is not before[name]:
                setattr(cls, name, before[name])


def never_skip() -> cache_dit.DBCacheConfig:
    # threshold 0: no residual difference is ever below it, so every block is computed
    return cache_dit.DBCacheConfig(
        Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.0, max_warmup_steps=0
    )


def skipping() -> cache_dit.DBCacheConfig:
    # no warm-up: a context that is not fresh at the switch could skip the small model's first step
    return cache_dit.DBCacheConfig(
        Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.6, max_warmup_steps=0
    )


def context(model: torch.nn.Module):
    return model._context_manager.get_context(model._context_names[0])


def instance_state(*objs) -> list[dict]:
    return [dict(vars(o)) for o in objs]


@pytest.mark.parametrize("order", ["cache_first", "apply_first"])
def test_a_never_skip_setting_equals_the_switch_alone_exactly(pair, family, order):
    pipe, small = pair
    expected_pipe, expected_small = tiny_pair(family)
    sr_plugin.apply(expected_pipe, expected_small, switch_step=SWITCH)
    expected = run(expected_pipe, family)
    if order == "cache_first":
        cache_dit.enable_cache(pipe, cache_config=never_skip())
        handle = sr_plugin.apply(pipe, small, switch_step=SWITCH)
    else:
        handle = sr_plugin.apply(pipe, small, switch_step=SWITCH)
        cache_dit.enable_cache(pipe, cache_config=never_skip())
    try:
        assert torch.equal(run(pipe, family), expected)
        assert getattr(small, "_is_cached", False)  # it did run through cache-dit's blocks
        assert context(small).get_current_step() == STEPS - SWITCH - 1  # its own steps (0-based), from the switch
    finally:
        handle.remove()
        cache_dit.disable_cache(pipe)


def test_the_small_model_caches_in_its_own_fresh_context(pair, family):
    pipe, small = pair
    cache_dit.enable_cache(pipe, cache_config=skipping())
    handle = sr_plugin.apply(pipe, small, switch_step=SWITCH)
    try:
        first = run(pipe, family)
        large_cached, small_cached = context(pipe.transformer).get_cached_steps(), context(small).get_cached_steps()
        assert small_cached and 0 not in small_cached  # it caches, and its first step is computed
        assert context(small) is not context(pipe.transformer) and large_cached
        assert torch.equal(run(pipe, family), first)  # the second call starts afresh, as the first did
        assert context(small).get_cached_steps() == small_cached
    finally:
        handle.remove()
        cache_dit.disable_cache(pipe)
    # (cache-dit patches the pipeline class: one cached pipeline of a class at a time)
    fresh_pipe, fresh_small = tiny_pair(family)
    cache_dit.enable_cache(fresh_pipe, cache_config=skipping())
    fresh = sr_plugin.apply(fresh_pipe, fresh_small, switch_step=SWITCH)
    try:
        assert torch.equal(run(fresh_pipe, family), first)
    finally:
        fresh.remove()
        cache_dit.disable_cache(fresh_pipe)


def test_taylorseer_and_a_step_mask_are_given_to_the_small_model_from_the_switch(pair, family):
    pipe, small = pair
    mask = [1, 1, 0, 1, 1, 1, 0, 1, 0, 1]
    config = cache_dit.DBCacheConfig(
        Fn_compute_blocks=1,
        Bn_compute_blocks=0,
        residual_diff_threshold=0.6,
        max_warmup_steps=0,
        steps_computation_mask=mask,
        num_inference_steps=STEPS,
    )
    cache_dit.enable_cache(
        pipe, cache_config=config, calibrator_config=cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1)
    )
    handle = sr_plugin.apply(pipe, small, switch_step=SWITCH)
    try:
        first = run(pipe, family)
        small_context = context(small)
        assert small_context.cache_config.steps_computation_mask == mask[SWITCH:]
        assert small_context.cache_config.num_inference_steps == STEPS - SWITCH
        assert small_context.calibrator_config is not None and small_context.calibrator_config.taylorseer_order == 1
        assert torch.equal(run(pipe, family), first)
    finally:
        handle.remove()
        cache_dit.disable_cache(pipe)


@pytest.mark.parametrize("order", ["remove_first", "disable_first"])
def test_remove_and_disable_in_either_order_leave_everything_as_before(pair, family, order):
    pipe, small = pair
    plain = run(pipe, family)
    large = pipe.transformer
    blocks = sr_plugin.adapters.adapter_for(pipe).block_lists(small)
    before = instance_state(pipe, small, *blocks)
    cache_dit.enable_cache(pipe, cache_config=skipping())
    handle = sr_plugin.apply(pipe, small, switch_step=SWITCH)
    run(pipe, family)
    if order == "remove_first":
        handle.remove()
        cache_dit.disable_cache(pipe)
    else:
        cache_dit.disable_cache(pipe)
        run(pipe, family)  # the next call sees the cache gone and takes the small model's off
        assert not getattr(small, "_is_cached", False)
        handle.remove()
    assert instance_state(pipe, small, *blocks)[1:] == before[1:]  # the small model and its blocks exactly
    assert pipe.transformer is large and torch.equal(run(pipe, family), plain)


def test_a_second_pipeline_of_the_same_class_is_unaffected(pair, family):
    pipe, small = pair
    other, _ = tiny_pair(family, seed=1)
    expected = run(other, family)
    cache_dit.enable_cache(pipe, cache_config=skipping())
    handle = sr_plugin.apply(pipe, small, switch_step=SWITCH)
    try:
        run(pipe, family)
        assert torch.equal(run(other, family), expected)
    finally:
        handle.remove()
        cache_dit.disable_cache(pipe)


def test_a_setup_that_cannot_carry_over_is_refused_at_apply(pair, family, monkeypatch):
    from cache_dit.caching.block_adapters import BlockAdapterRegister

    pipe, small = pair
    cache_dit.enable_cache(pipe, cache_config=skipping())
    before = instance_state(pipe, small)
    supported = BlockAdapterRegister.is_supported
    monkeypatch.setattr(
        BlockAdapterRegister, "is_supported", classmethod(lambda cls, obj: False if obj is small else supported(obj))
    )
    try:
        with pytest.raises(ValueError, match="cache-dit has no block adapter for the small .*disable cache-dit"):
            sr_plugin.apply(pipe, small, switch_step=SWITCH)
        assert instance_state(pipe, small) == before and sr_plugin.handle_of(pipe) is None
    finally:
        cache_dit.disable_cache(pipe)


@pytest.mark.parametrize("accel", [{"teacache": sr_plugin.TeaCacheConfig(0.1, "identity")}, {"fbcache": 0.1}])
def test_a_second_block_cache_on_top_of_cache_dit_is_refused(pair, accel):
    pipe, small = pair
    cache_dit.enable_cache(pipe, cache_config=skipping())
    try:
        with pytest.raises(ValueError, match="cache-dit already caches the large transformer's blocks"):
            sr_plugin.accelerate(pipe, **accel)
        assert sr_plugin.handle_of(pipe) is None
    finally:
        cache_dit.disable_cache(pipe)


def test_a_schedule_that_does_not_run_the_large_model_first_in_one_segment_is_refused(pair, family):
    """cache-dit counts the large model's steps in one context per call: a schedule that brings it back, or starts
    it late, is refused at apply (and at the call when cache-dit comes after apply), the pipeline untouched."""
    pipe, small = pair
    cache_dit.enable_cache(pipe, cache_config=never_skip())
    for schedule in ("large:3,small:6,large", "small:3,large"):
        with pytest.raises(ValueError, match="does not run it in one segment from step 0"):
            sr_plugin.apply(pipe, small, schedule=schedule)
        assert sr_plugin.handle_of(pipe) is None
    sr_plugin.apply(pipe, small, schedule="large:3,small").remove()  # large first: fine
    cache_dit.disable_cache(pipe)
    handle = sr_plugin.apply(pipe, small, schedule="small:3,large")
    cache_dit.enable_cache(pipe, cache_config=never_skip())
    with pytest.raises(ValueError, match="does not run it in one segment from step 0"):
        run(pipe, family)
    assert handle.trace == []
