"""Delta calibration: the documented pick on a synthetic sweep, clear errors for unreachable or malformed
targets, and a real sweep on a tiny pipeline whose extremes are known."""

from __future__ import annotations

import pytest
from pipeline_helpers import CallLog

from sr_plugin.calibration.delta import DeltaCalibration, SweepRow, calibrate_delta, sweep_switch
from sr_plugin.lab.tiny import TINY_CALL, tiny_pair

SWEEP = DeltaCalibration(
    [
        SweepRow("delta=0.001", 0.001, None, 20.0, 0.80, 35.0, 0.990),
        SweepRow("delta=0.01", 0.01, None, 10.0, 0.45, 30.0, 0.960),
        SweepRow("delta=0.1", 0.1, None, 5.0, 0.35, 24.0, 0.900),
        SweepRow("k=8", None, 8, 8.0, 0.40, 28.0, 0.950),
    ]
)


def test_pick_takes_the_largest_speedup_that_keeps_the_quality():
    assert SWEEP.pick(min_ssim=0.95).setting == "k=8"  # 0.40 beats 0.45 and 0.80
    assert SWEEP.pick(min_ssim=0.96).setting == "delta=0.01"
    assert SWEEP.pick(min_ssim=0.5).setting == "delta=0.1"


def test_pick_takes_the_best_quality_within_the_time():
    assert SWEEP.pick(max_time_ratio=0.45).setting == "delta=0.01"
    assert SWEEP.pick(max_time_ratio=0.40).setting == "k=8"
    assert SWEEP.pick(max_time_ratio=1.0).setting == "delta=0.001"


def test_a_target_no_setting_reaches_is_an_error_naming_the_closest():
    with pytest.raises(ValueError, match="no setting keeps a mean SSIM of 0.999.*delta=0.001 with 0.9900"):
        SWEEP.pick(min_ssim=0.999)
    with pytest.raises(ValueError, match="no setting runs within 0.3 .*delta=0.1 at 0.350"):
        SWEEP.pick(max_time_ratio=0.3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, "exactly one target"),
        ({"min_ssim": 0.9, "max_time_ratio": 0.5}, "exactly one target"),
        ({"min_ssim": 1.5}, r"min_ssim must be a number in \(0, 1\]"),
        ({"min_ssim": 0.0}, r"min_ssim must be a number in \(0, 1\]"),
        ({"max_time_ratio": -0.1}, r"max_time_ratio must be a number in \(0, 1\]"),
    ],
)
def test_targets_outside_the_unit_interval_are_refused_before_any_generation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SWEEP.pick(**kwargs)
    pipe, small = tiny_pair("wan")
    log = CallLog(large=pipe.transformer, small=small)
    with pytest.raises(ValueError, match=message):
        calibrate_delta(pipe, small, ["a fox"], **kwargs)
    assert log.calls == []


def test_bad_sweeps_are_refused_before_any_generation():
    pipe, small = tiny_pair("wan")
    log = CallLog(large=pipe.transformer, small=small)
    with pytest.raises(ValueError, match="non-empty list"):
        sweep_switch(pipe, small, [])
    with pytest.raises(ValueError, match="delta must be a number in the open interval"):
        sweep_switch(pipe, small, ["a fox"], deltas=(0.01, 2.0))
    assert log.calls == []


def test_sweep_on_a_tiny_pipeline_knows_its_extremes():
    pipe, small = tiny_pair("cogvideox")
    sweep = sweep_switch(
        pipe,
        small,
        ["a fox", "a boat"],
        deltas=(),
        switch_steps=(0, 3, 6),
        num_inference_steps=6,
        **TINY_CALL["cogvideox"],
    )
    never, k3, small_only = {r.switch_step: r for r in sweep.rows}[6], sweep.rows[1], sweep.rows[0]
    assert never.ssim == 1.0 and never.mean_switch_step is None  # k = N: the large-only video itself
    assert small_only.mean_switch_step == 0 and k3.mean_switch_step == 3
    assert small_only.ssim < k3.ssim < 1.0
    assert sweep.pick(min_ssim=1.0).setting == "k=6"


def test_the_step_time_ratio_is_fitted_from_paired_runs_and_one_outlier_does_not_move_it():
    from sr_plugin.calibration.delta import fit_step_ratio, modelled_time_ratio

    n, rho = 50, 0.4
    ks = [0, 10, 20, 30, 40, 10]
    ratios = [(k + rho * (n - k)) / n for k in ks]
    ratios[-1] *= 1.5  # one run disturbed by the machine
    assert fit_step_ratio(ks, ratios, n) == pytest.approx(rho)
    assert fit_step_ratio([n, n], [1.0, 1.1], n) is None  # nothing switched: nothing to fit
    assert modelled_time_ratio([10, 30, n], n, 0.5) == pytest.approx(((10 + 20) + (30 + 10) + 50) / 150)
    with pytest.raises(ValueError, match="one time ratio per switch step"):
        fit_step_ratio([1, 2], [0.5], n)


def test_paired_rounds_alternate_so_a_first_run_penalty_does_not_bias_the_promise(monkeypatch):
    """Synthetic clock: a small step costs a quarter of a large one and whichever run of a pair goes first pays
    10% more. With the order alternating, the fitted ratio and the promise stay right, and the rerun of the
    picked setting on other prompts measures what was promised."""
    import sr_plugin
    from sr_plugin.calibration import delta as delta_calibration

    n, rho, real = 6, 0.25, delta_calibration.timed_run
    position = []

    def synthetic(pipe, prompt, seed, steps, **call):
        video, _, total = real(pipe, prompt, seed, steps, **call)
        handle = sr_plugin.handle_of(pipe)
        k = steps if handle is None else next((r.index for r in handle.trace if r.model == "small"), steps)
        first = len(position) % 2 == 1  # position counts runs after the untimed warm-up run
        position.append(first)
        return video, (k + rho * (steps - k)) / steps * (1.1 if first else 1.0), total

    monkeypatch.setattr(delta_calibration, "timed_run", synthetic)
    pipe, small = tiny_pair("wan")
    sweep = sweep_switch(
        pipe, small, ["a fox", "a boat"], deltas=(), switch_steps=(0, 2, 4), num_inference_steps=n, **TINY_CALL["wan"]
    )
    assert sweep.step_ratio == pytest.approx(rho, abs=0.01)
    for row in sweep.rows:
        k = row.switch_step
        assert row.measured_time_ratio == pytest.approx((k + rho * (n - k)) / n)
        assert row.time_ratio == pytest.approx((k + rho * (n - k)) / n, abs=0.01)
        assert row.time_ratio_se == 0.0  # a fixed step switches at the same step on every prompt
    picked = sweep.pick(max_time_ratio=0.6)
    assert picked.setting == "k=2"
    position.clear()
    check = delta_calibration.check_promise(
        pipe, small, picked, ["a cat", "a tree"], num_inference_steps=n, **TINY_CALL["wan"]
    )
    assert check.setting == "k=2" and check.measured_mean_switch_step == 2
    assert abs(check.relative_error) < 0.01 and check.promised_relative_se == 0.0


def test_an_adaptive_switch_promises_with_the_spread_of_its_switch_steps():
    from sr_plugin.calibration.delta import _standard_error, modelled_time_ratio

    ks, n, rho = [10, 14, 18, 22], 50, 0.4
    per_prompt = [modelled_time_ratio([k], n, rho) for k in ks]
    assert modelled_time_ratio(ks, n, rho) == pytest.approx(sum(per_prompt) / 4)
    # (1 - rho) / n per step of spread: the standard deviation of ks is 5.164, over sqrt(4)
    assert _standard_error(per_prompt) == pytest.approx(5.163977 * 0.6 / 50 / 2, rel=1e-5)
    assert _standard_error([0.5]) == 0.0
