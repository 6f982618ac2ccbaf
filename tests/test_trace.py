"""handle.trace and handle.switch_step describe the last call, and agree with the rule."""

from __future__ import annotations

from conftest import STEPS, CallLog, run

import sr_plugin
from sr_plugin.policy import SwitchOptions, SwitchPolicy


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
    policy = SwitchPolicy(SwitchOptions(delta=0.02).resolve(STEPS))
    for r in handle.trace:
        if policy.use_small(r.index):
            break
        policy.observe(r.index, r.d)
    assert policy.switch_step == handle.switch_step


def test_switch_falls_on_a_step_boundary_whatever_the_calls_per_step(pair, family):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small)
    log = CallLog(large=pipe.transformer, small=small)
    run(pipe, family)
    log.close()
    per_step = 2 if family == "wan" else 1  # Wan: cond and uncond calls; CogVideoX: one batched call
    k = handle.switch_step
    assert log.calls == ["large"] * per_step * k + ["small"] * per_step * (STEPS - k)


def test_never_switching_run_reports_no_switch(pair, family):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small, switch_step=STEPS)
    run(pipe, family)
    assert handle.switch_step is None and {r.model for r in handle.trace} == {"large"}
