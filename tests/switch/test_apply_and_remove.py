"""apply / remove, pipelines that share a transformer, device moves and model CPU offload."""

from __future__ import annotations

import pytest
import torch
from pipeline_helpers import CallLog, run

import sr_plugin


def instance_state(pipe):
    """What `apply` may touch on the pipeline instance: its attributes and config."""
    return dict(vars(pipe)), dict(pipe.config)


def test_remove_restores_the_unpatched_pipeline_exactly(pair, family):
    pipe, small = pair
    baseline = run(pipe, family, output_type="pt")
    before_attrs, before_config = instance_state(pipe)  # after a call: the pipeline sets its own fields
    small_attrs = dict(vars(small))
    handle = sr_plugin.apply(pipe, small)
    assert not torch.equal(run(pipe, family, output_type="pt"), baseline)
    handle.remove()
    attrs, config = instance_state(pipe)
    assert attrs == before_attrs and config == before_config
    assert dict(vars(small)) == small_attrs  # no instance forward, no hook registry left on the small model
    assert torch.equal(run(pipe, family, output_type="pt"), baseline)
    handle.remove()  # idempotent


def test_second_apply_is_a_clear_error_and_apply_after_remove_works(pair, family):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small)
    with pytest.raises(RuntimeError, match="already"):
        sr_plugin.apply(pipe, small, delta=0.02)
    handle.remove()
    handle = sr_plugin.apply(pipe, small, switch_step=2)
    run(pipe, family, steps=4)
    assert handle.switch_step == 2


def test_pipelines_sharing_one_large_transformer_do_not_affect_each_other(family):
    from sr_plugin.lab.tiny import tiny_pair

    pipe_a, small = tiny_pair(family)
    pipe_b = type(pipe_a)(**pipe_a.components)  # shares every module, the large transformer included
    pipe_b.set_progress_bar_config(disable=True)
    plain = run(pipe_b, family)
    handle = sr_plugin.apply(pipe_a, small, switch_step=3)
    with_sr = run(pipe_a, family)
    log = CallLog(small=small)
    assert torch.equal(run(pipe_b, family), plain)  # B never sees the small model
    assert log.calls == []
    log.close()
    assert torch.equal(run(pipe_a, family), with_sr) and not torch.equal(with_sr, plain)
    handle.remove()
    assert torch.equal(run(pipe_a, family), plain)


def test_pipeline_to_moves_the_small_transformer(pair, family):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small)
    pipe.to(torch.float64)
    assert small.dtype == torch.float64
    pipe.to("cpu", torch.float32)
    assert small.dtype == torch.float32
    handle.remove()
    pipe.to(dtype=torch.float64)
    assert small.dtype == torch.float32  # after remove, the small model is the user's own again


def test_model_cpu_offload_carries_the_small_transformer(pair, family):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small, switch_step=3)
    expected = run(pipe, family)
    pipe.enable_model_cpu_offload(device="cpu")
    hooked = [h.model for h in pipe._all_hooks]
    assert any(m is small for m in hooked) and hasattr(small, "_hf_hook")
    assert torch.equal(run(pipe, family), expected)
    assert any(h.model is small for h in pipe._all_hooks)  # re-joined after the call's maybe_free_model_hooks
    handle.remove()
    assert not hasattr(small, "_hf_hook") and all(h.model is not small for h in pipe._all_hooks)


def test_apply_after_model_cpu_offload_joins_the_sequence(pair, family):
    pipe, small = pair
    pipe.enable_model_cpu_offload(device="cpu")
    sr_plugin.apply(pipe, small, switch_step=3)
    assert any(h.model is small for h in pipe._all_hooks)
    run(pipe, family, steps=4)
