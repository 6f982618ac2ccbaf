"""apply and accelerate are all or nothing: a failure at any installation step leaves the pipeline, both models
and their hook registries exactly as they were; models carrying another pipeline's accelerations are refused."""

from __future__ import annotations

import pytest
import torch
from pipeline_helpers import run

import sr_plugin
import sr_plugin.accel.compile as compile_module  # where compile attaches
import sr_plugin.accel.pab as pab_module  # where PAB attaches
import sr_plugin.accel.teacache as teacache_module  # where TeaCache attaches
import sr_plugin.switch.api as api_module
import sr_plugin.switch.routing as routing_module  # where the large model's offloader is made
from sr_plugin import PABConfig, TeaCacheConfig
from sr_plugin.lab.tiny import tiny_pair
from sr_plugin.pipeline.calls import CallTracker
from sr_plugin.pipeline.models import ModelsInPlay


def snapshot(pipe, *models):
    """What an installation can change: the instances' own attributes, and on every submodule its own
    attributes and hook names. An empty hook registry counts as none: diffusers' ``cache_context`` creates one
    lazily on any call, and removal drops it."""
    state = {"pipe": {k: id(v) for k, v in vars(pipe).items()}}
    for i, model in enumerate(models):
        for name, module in model.named_modules():
            registry = vars(module).get("_diffusers_hook")
            hooks = sorted(registry.hooks) if registry is not None and registry.hooks else None
            own = {
                k: id(v)
                for k, v in vars(module).items()
                if not k.startswith("_") or k == "_sr_plugin_accelerated_by" or (k == "_diffusers_hook" and hooks)
            }
            state[(i, name)] = (own, hooks)
    return state


class Injected(RuntimeError):
    pass


def failing(*args, **kwargs):
    raise Injected("injected failure")


# (module, attribute) of each installation step, in the order apply and accelerate take them
APPLY_STEPS = [
    (api_module, "parallelize_like"),
    (api_module, "Router"),
    (CallTracker, "add"),
    (ModelsInPlay, "track"),
    (ModelsInPlay, "join"),
    (routing_module, "LargeOffloader"),
    (api_module, "_restore_early"),
    (api_module, "SRHandle"),
]
ATTACH_STEPS = [(teacache_module, "apply_teacache"), (pab_module, "apply_cfg_pab"), (ModelsInPlay, "track")]


@pytest.mark.parametrize("step", APPLY_STEPS + ATTACH_STEPS, ids=lambda s: s[1])
def test_a_failed_apply_leaves_everything_as_it_was(monkeypatch, family, step):
    pipe, small = tiny_pair(family)
    sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(0.0, "identity"), pab=PABConfig(1, 1, (0, 1000)))
    expected_output = run(pipe, family)
    before = snapshot(pipe, pipe.transformer, small)
    monkeypatch.setattr(*step, failing)
    with pytest.raises(Injected):
        sr_plugin.apply(pipe, small, switch_step=3, offload_large=True)
    monkeypatch.undo()
    assert snapshot(pipe, pipe.transformer, small) == before
    assert torch.equal(run(pipe, family), expected_output)  # no switch: the large model ran every step
    handle = sr_plugin.apply(pipe, small, switch_step=3)  # and a later apply works normally
    run(pipe, family)
    assert handle.switch_step == 3


@pytest.mark.parametrize("step", ATTACH_STEPS + [(compile_module, "compile_blocks")], ids=lambda s: s[1])
@pytest.mark.parametrize("with_switch", [False, True])
def test_a_failed_accelerate_leaves_everything_as_it_was(monkeypatch, step, with_switch):
    pipe, small = tiny_pair("wan")
    if with_switch:
        sr_plugin.apply(pipe, small, switch_step=3)
    expected_output = run(pipe, "wan")
    before = snapshot(pipe, pipe.transformer, small)
    calls = {"n": 0}
    original = getattr(*step)

    def fail_on_second_model(*args, **kwargs):  # the large model attaches, the small one fails
        calls["n"] += 1
        if calls["n"] == (2 if with_switch else 1):
            raise Injected("injected failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(*step, fail_on_second_model)
    with pytest.raises(Injected):
        sr_plugin.accelerate(
            pipe, teacache=TeaCacheConfig(0.5, "identity"), pab=PABConfig(2, 2, (0, 1000)), compile={"backend": "eager"}
        )
    monkeypatch.undo()
    assert snapshot(pipe, pipe.transformer, small) == before
    assert torch.equal(run(pipe, "wan"), expected_output)
    sr_plugin.accelerate(pipe, pab=True).remove()  # not "already called"


def test_a_small_model_that_is_not_loaded_is_refused_before_anything_changes():
    pipe, small = tiny_pair("wan")
    before = snapshot(pipe, pipe.transformer)
    with pytest.raises(ValueError, match="weights are not loaded .* meta device"):
        sr_plugin.apply(pipe, small.to("meta"), switch_step=1)
    assert snapshot(pipe, pipe.transformer) == before


def test_models_carrying_another_pipelines_accelerations_are_refused():
    """TeaCache and PAB keep their state on the model: a model two accelerated pipelines share would mix their
    states, so the second pipeline is refused, unchanged, with a message that says what to do."""
    tea = TeaCacheConfig(0.1, "identity")
    pipe_a, small = tiny_pair("wan")
    pipe_b, _ = tiny_pair("wan")
    pipe_b.transformer = pipe_a.transformer  # two pipelines sharing one large model
    sr_plugin.apply(pipe_a, small, switch_step=3)
    sr_plugin.accelerate(pipe_a, teacache=tea)
    before = snapshot(pipe_b, pipe_b.transformer, small)
    with pytest.raises(ValueError, match="large transformer already carries sr_plugin accelerations of another"):
        sr_plugin.accelerate(pipe_b, pab=True)
    assert snapshot(pipe_b, pipe_b.transformer, small) == before
    pipe_c, _ = tiny_pair("wan")  # its own large model, but the small one is A's accelerated one
    sr_plugin.accelerate(pipe_c, pab=True)
    before = snapshot(pipe_c, pipe_c.transformer, small)
    with pytest.raises(ValueError, match="small transformer already carries sr_plugin accelerations of another"):
        sr_plugin.apply(pipe_c, small, switch_step=3)
    assert snapshot(pipe_c, pipe_c.transformer, small) == before


def test_a_pipeline_sharing_an_accelerated_model_runs_it_plainly():
    """B shares A's large model; A has TeaCache and PAB and an interrupted last call. B's calls are not A's
    to cache: B's output equals its output before A was accelerated, bit for bit."""
    pipe_a, _ = tiny_pair("wan")
    pipe_b, _ = tiny_pair("wan")
    pipe_b.transformer = pipe_a.transformer
    expected = run(pipe_b, "wan")
    sr_plugin.accelerate(pipe_a, teacache=TeaCacheConfig(1.5, "identity"), pab=PABConfig(2, 2, (0, 1000)))

    def interrupt(p, i, t, kwargs):
        p._interrupt = i >= 4
        return kwargs

    run(pipe_a, "wan", callback_on_step_end=interrupt)
    assert torch.equal(run(pipe_b, "wan"), expected)


def test_a_mirrored_first_block_cache_is_taken_back_with_the_large_models():
    from diffusers import FirstBlockCacheConfig

    for family in ("wan", "cogvideox"):
        fresh, fresh_small = tiny_pair(family)
        sr_plugin.apply(fresh, fresh_small, switch_step=3)
        expected = run(fresh, family)
        pipe, small = tiny_pair(family)
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.5))
        sr_plugin.apply(pipe, small, switch_step=3)
        seen = []
        run(
            pipe,
            family,
            callback_on_step_end=lambda p, i, t, kw, seen=seen, small=small: seen.append(small._cache_config) or kw,
        )
        assert isinstance(seen[-1], FirstBlockCacheConfig)
        pipe.transformer.disable_cache()
        assert torch.equal(run(pipe, family), expected)
        assert getattr(small, "_cache_config", None) is None


def test_first_block_cache_on_a_one_block_model_is_refused_before_anything_changes():
    from sr_plugin.lab.tiny import tiny_wan_transformer

    pipe, _ = tiny_pair("wan")
    one_block = tiny_wan_transformer(num_layers=1, num_heads=2, seed=5)
    sr_plugin.apply(pipe, one_block, switch_step=3)
    before = snapshot(pipe, pipe.transformer, one_block)
    with pytest.raises(
        ValueError, match="First Block Cache needs at least two transformer blocks .*the small transformer has 1"
    ):
        sr_plugin.accelerate(pipe, fbcache=0.1)
    assert snapshot(pipe, pipe.transformer, one_block) == before


def test_two_pipelines_sharing_a_small_model_cannot_have_calls_in_flight_together():
    """CogVideoX's hand-off keeps per-call state on the small model's hook: a second call in flight would stack
    a second mapping. It is refused before its first step; one after the other, both work."""
    pipe_a, small = tiny_pair("cogvideox")
    pipe_b, _ = tiny_pair("cogvideox")
    sr_plugin.apply(pipe_a, small, switch_step=3)
    handle_b = sr_plugin.apply(pipe_b, small, switch_step=3)
    expected_b = run(pipe_b, "cogvideox")
    refused = []

    def start_b_inside_a(p, i, t, kwargs):
        if i == 4:  # A's small phase
            with pytest.raises(RuntimeError, match="small transformer is in use by a call of another pipeline"):
                run(pipe_b, "cogvideox")
            refused.append(i)
        return kwargs

    run(pipe_a, "cogvideox", callback_on_step_end=start_b_inside_a)
    assert refused == [4]
    assert torch.equal(run(pipe_b, "cogvideox"), expected_b) and handle_b.switch_step == 3
