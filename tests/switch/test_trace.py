"""handle.trace and handle.switch_step describe the last call, and agree with the rule."""

from __future__ import annotations

import pytest
from pipeline_helpers import STEPS, CallLog, run

import sr_plugin
from sr_plugin.switch.policy import AdaptiveBounds, AdaptiveDecider


def test_trace_fields_follow_the_definitions(pair, family):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small)
    run(pipe, family)
    trace = handle.trace
    pipe.scheduler.set_timesteps(STEPS)
    assert [r.index for r in trace] == list(range(STEPS))
    assert [r.timestep for r in trace] == [float(t) for t in pipe.scheduler.timesteps]
    k = handle.switch_step
    assert k is not None and 3 <= k <= 6
    assert [r.model for r in trace] == ["large"] * k + ["small"] * (STEPS - k)
    assert trace[0].d is None and trace[0].s is None and trace[1].s is None
    assert all(0 < r.d < 1 for r in trace[1:])
    for prev, cur in zip(trace[1:], trace[2:]):
        assert cur.s == prev.d - cur.d


def test_recorded_metric_reproduces_the_switch(pair, family):
    """The pure policy fed the trace's d values decides the same step the pipeline switched at."""
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small, delta=0.02)
    run(pipe, family)
    decider = AdaptiveDecider(AdaptiveBounds.resolve(0.02, None, None, STEPS))
    switch = None
    for r in handle.trace:
        if decider.decide(r.index) is not None:
            switch = r.index
            break
        decider.observe(r.index, r.d)
    assert switch == handle.switch_step is not None


def test_switch_falls_on_a_step_boundary_whatever_the_calls_per_step(pair, family):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small)
    log = CallLog(large=pipe.transformer, small=small)
    run(pipe, family)
    log.close()
    per_step = 2 if family == "wan" else 1  # Wan: cond and uncond calls; CogVideoX: one batched call
    k = handle.switch_step
    assert log.calls == ["large"] * per_step * k + ["small"] * per_step * (STEPS - k)


def test_a_switch_step_the_call_never_reaches_is_refused_before_step_0(pair, family):
    """``switch_step=k`` is the schedule "large:k,small": a call of k steps or fewer does not fit it."""
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small, switch_step=STEPS)
    log = CallLog(large=pipe.transformer, small=small)
    with pytest.raises(
        ValueError,
        match=f"switch_step={STEPS} hands over to the small model at step {STEPS}, but this call has {STEPS} steps",
    ):
        run(pipe, family)
    log.close()
    assert log.calls == [] and handle.switch_step is None and handle.trace == []


def test_a_call_too_short_for_the_adaptive_switch_says_it_ran_large_only(pair, family):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small)  # the adaptive rule hands over at step 3 at the earliest
    with pytest.warns(UserWarning, match="this call has 3 steps, and the adaptive hand-off .* step 3 at the earliest"):
        run(pipe, family, steps=3)
    assert handle.switch is None and [r.model for r in handle.trace] == ["large"] * 3


def test_metric_is_computed_from_the_guided_output_the_scheduler_receives(family):
    """d recomputed independently from what scheduler.step was given (after CFG; CogVideoX with dynamic CFG,
    whose guidance scale changes every step) equals the trace's d."""
    import math

    import torch

    from sr_plugin.lab.tiny import tiny_pair

    pipe, small = tiny_pair(family)
    seen = []
    scheduler = pipe.scheduler
    step = scheduler.step

    def spy(model_output, *args, **kwargs):
        sample = args[1]  # both pipelines call step(model_output, t, sample, ...)
        seen.append((model_output.clone().float(), sample.clone().float()))
        return step(model_output, *args, **kwargs)

    scheduler.step = spy  # the plugin wraps this instance attribute for the call, and restores it after
    extra = {"use_dynamic_cfg": True} if family == "cogvideox" else {}
    handle = sr_plugin.apply(pipe, small)
    run(pipe, family, **extra)
    assert len(seen) == STEPS and scheduler.step is spy
    x0 = []
    for j, (v, x) in enumerate(seen):
        if family == "wan":
            x0.append(x - float(scheduler.sigmas[j]) * v)
        else:
            abar = float(scheduler.alphas_cumprod[int(scheduler.timesteps[j])])
            x0.append(math.sqrt(abar) * x - math.sqrt(1 - abar) * v)
    expected = [None] + [
        math.tanh(((a - b).abs().mean() / (b.abs().mean() + 1e-8)).item()) for b, a in zip(x0[:-1], x0[1:])
    ]
    for r, d in zip(handle.trace, expected):
        assert (r.d is None) == (d is None)
        if d is not None:
            assert r.d == pytest.approx(d, rel=1e-5)
    if family == "cogvideox":
        assert not torch.equal(run(pipe, family), run(pipe, family, **extra))  # dynamic CFG matters


@pytest.mark.parametrize("kwargs,reason", [({"switch_step": 4}, "fixed"), ({"delta": 1e-9}, "max_switch_step")])
def test_handle_reports_why_and_within_which_bounds_the_call_switched(kwargs, reason):
    from sr_plugin.lab.tiny import tiny_pair

    pipe, small = tiny_pair("wan")
    handle = sr_plugin.apply(pipe, small, **kwargs)
    assert handle.switch is None  # before the first call
    run(pipe, "wan")
    switch = handle.switch
    assert switch.reason == reason and switch.step == handle.switch_step and switch.num_steps == STEPS
    if reason == "max_switch_step":  # 10 steps: default bounds 3 and 6
        assert (switch.min_switch_step, switch.max_switch_step, switch.step, switch.delta) == (3, 6, 6, 1e-9)
    elif reason == "fixed":
        assert (switch.min_switch_step, switch.max_switch_step, switch.delta) == (4, 4, None)
    assert handle.switch.as_dict()["reason"] == reason


def test_adaptive_switch_before_the_clamp_says_delta():
    from sr_plugin.lab.tiny import tiny_pair

    pipe, small = tiny_pair("wan")  # its s after step 2 is 0.0031: the rule fires at min_switch_step 3
    handle = sr_plugin.apply(pipe, small)
    run(pipe, "wan")
    trace = handle.trace
    k = handle.switch_step
    assert handle.switch.reason == "delta" and k < handle.switch.max_switch_step
    assert 0 < trace[k - 1].s < 0.01


def test_both_handles_give_one_record_type_that_agrees_step_for_step(pair, family):
    """`accel.trace` is the switch's `StepRecord`s without the metric: same model, cache and attention per step."""
    from pipeline_helpers import LINEAR, MIX

    pipe, small = pair
    sr = sr_plugin.apply(pipe, small, switch_step=4)
    accel = sr_plugin.accelerate(pipe, teacache=sr_plugin.TeaCacheConfig(MIX[family], LINEAR))
    run(pipe, family)
    assert all(isinstance(r, sr_plugin.StepRecord) for r in accel.trace)
    assert [(r.index, r.timestep, r.model, r.cache, r.attention) for r in accel.trace] == [
        (r.index, r.timestep, r.model, r.cache, r.attention) for r in sr.trace
    ]
    assert [r.model for r in accel.trace] == ["large"] * 4 + ["small"] * (STEPS - 4)
    assert all(r.d is None and r.s is None for r in accel.trace)
    assert {v for r in accel.trace if r.model == "small" for v in r.cache.values()} == {"computed", "skipped"}
