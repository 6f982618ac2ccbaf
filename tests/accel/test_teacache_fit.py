"""TeaCache calibration: the fit recovers a known polynomial, the fitted coefficients reproduce TeaCache's
own decisions on a real pipeline, and bad inputs are refused before any generation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pipeline_helpers import CallLog

import sr_plugin
from sr_plugin.accel import TeaCacheFit, fit_rescale, fit_teacache
from sr_plugin.accel.teacache import rescale
from sr_plugin.lab.tiny import TINY_CALL, tiny_pair
from sr_plugin.pipeline.seeded import run_seeded

KNOWN = (3.0, -2.0, 0.5, 1.5, -0.01)


def test_fit_recovers_a_known_polynomial():
    x = np.linspace(0.01, 1.2, 40)
    coefficients, r2 = fit_rescale(x, np.polyval(KNOWN, x), degree=4)
    assert np.allclose(coefficients, KNOWN, atol=1e-8) and r2 == pytest.approx(1.0)
    noisy = np.polyval(KNOWN, x) + np.random.default_rng(0).normal(0, 0.05, x.shape)
    coefficients, r2 = fit_rescale(x, noisy, degree=4)
    # degree-4 coefficients are ill-conditioned under noise; the fitted curve is what TeaCache uses
    assert np.abs(np.polyval(coefficients, x) - np.polyval(KNOWN, x)).max() < 0.06 and 0.9 < r2 < 1.0


@pytest.mark.parametrize(
    "x,degree,message",
    [
        ([0.1, 0.2, 0.3], 4, "more than 4 distinct x values"),
        ([0.1] * 10, 2, "more than 2 distinct x values"),
        ([0.1, 0.2, 0.3], 0, "degree must be an int from 1 to 8"),
        ([0.1, 0.2, 0.3], True, "degree must be an int from 1 to 8"),
        ([0.1, math.nan, 0.3, 0.4], 1, "finite"),
    ],
)
def test_fit_refuses_what_cannot_fix_a_polynomial(x, degree, message):
    with pytest.raises(ValueError, match=message):
        fit_rescale(x, [1.0] * len(x), degree)


def test_calibrated_coefficients_reproduce_teacache_decisions_with_the_switch():
    pipe, small = tiny_pair("wan")
    sr_plugin.apply(pipe, small, switch_step=5)
    steps, call = 12, dict(TINY_CALL["wan"])
    calibration = fit_teacache(pipe, ["a red fox", "a blue boat at sea"], num_inference_steps=steps, degree=2, **call)
    assert set(calibration.coefficients) == {"large", "small"}  # the small model calibrated on its own steps
    assert all(math.isfinite(r2) for r2 in calibration.r_squared.values())
    # every sequence: None at the model's first call of a branch, then one x per call
    assert calibration.sequences["0/large/0"][0] is None and len(calibration.sequences["0/large/0"]) == 5
    assert len(calibration.sequences["0/small/1"]) == steps - 5
    # a threshold between the rescaled distances, so that some calls skip and some compute
    rescaled = [
        rescale(calibration.coefficients[k.split("/")[1]], x)
        for k, seq in calibration.sequences.items()
        for x in seq[1:]
        if k.startswith("0/")
    ]
    threshold = 1.5 * float(np.median(rescaled))
    accel = sr_plugin.accelerate(pipe, teacache=calibration.config(threshold))
    run_seeded(pipe, "a red fox", 0, num_inference_steps=steps, **call)
    expected = {}
    for role, first_step in (("large", 0), ("small", 5)):
        for branch in (0, 1):
            sequence = calibration.sequences[f"0/{role}/{branch}"]
            accumulated = 0.0
            for i, x in enumerate(sequence):
                step = first_step + i
                compute = x is None or step < 1 or step >= steps - 1
                if not compute:
                    accumulated += rescale(calibration.coefficients[role], x)
                    compute = accumulated >= threshold
                if compute:
                    accumulated = 0.0
                expected[(step, role, branch)] = "computed" if compute else "skipped"
    seen = {}
    for record in accel.trace:
        for branch, what in enumerate(record.cache.values()):
            seen[(record.index, record.model, branch)] = what
    assert seen == expected
    assert set(expected.values()) == {"computed", "skipped"}


def test_calibration_saves_and_loads(tmp_path):
    calibration = TeaCacheFit({"large": KNOWN, "small": (1.0, 0.0, 0.0, 0.0, 0.0)}, {"large": 0.97, "small": 0.5}, 4)
    calibration.save(tmp_path / "c.json")
    loaded = TeaCacheFit.load(tmp_path / "c.json")
    assert loaded.coefficients == calibration.coefficients and loaded.r_squared == calibration.r_squared
    (tmp_path / "bad.json").write_text('{"coefficients": {"large": [1, 2]}, "r_squared": {}, "degree": 4}')
    with pytest.raises(ValueError, match="must be 5 numbers"):
        TeaCacheFit.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"prompts": []}, "non-empty list of strings"),
        ({"prompts": "a fox"}, "non-empty list of strings"),
        ({"prompts": ["a fox"], "degree": 9}, "degree must be an int from 1 to 8"),
    ],
)
def test_calibration_refuses_bad_input_before_any_generation(kwargs, message):
    pipe, small = tiny_pair("wan")
    log = CallLog(large=pipe.transformer)
    with pytest.raises(ValueError, match=message):
        fit_teacache(pipe, **kwargs)
    assert log.calls == []


def test_calibration_refuses_a_pipeline_with_caching_on():
    pipe, small = tiny_pair("wan")
    sr_plugin.accelerate(pipe, pab=True)
    log = CallLog(large=pipe.transformer)
    with pytest.raises(ValueError, match="without caching accelerations"):
        fit_teacache(pipe, ["a fox"])
    assert log.calls == []


@pytest.mark.parametrize(
    "coefficients,message",
    [
        ((1.0, math.nan, 0.0), "finite"),
        ((), "1 to 9 numbers"),
        (tuple(range(12)), "1 to 9 numbers"),
    ],
)
def test_coefficients_of_the_wrong_length_or_with_nan_are_refused(coefficients, message):
    pipe, small = tiny_pair("wan")
    with pytest.raises(ValueError, match=message):
        sr_plugin.accelerate(pipe, teacache=sr_plugin.TeaCacheConfig(0.1, coefficients))


@pytest.mark.parametrize("family_name", ["wan", "cogvideox"])
def test_shipped_families_use_their_fitted_coefficients_by_default(family_name):
    """The trained families ship a calibration beside each transformer's weights; with no coefficients given,
    each model gets its own fitted polynomial (they match no published preset)."""
    import json

    from sr_plugin.accel import accelerations_of
    from sr_plugin.accel.teacache import CALIBRATION_FILE, resolve_coefficients
    from sr_plugin.lab import trained

    pipe, small, extra = trained.load(family_name)
    sr_plugin.apply(pipe, small, **extra)
    sr_plugin.accelerate(pipe, teacache=0.1)
    accel = accelerations_of(pipe)
    for role, model in (("large", pipe.transformer), ("small", small)):
        shipped = json.loads((trained.folder(family_name, role) / "transformer" / CALIBRATION_FILE).read_text())
        assert resolve_coefficients(accel.configs["teacache"], accel.adapter, model, role) == tuple(
            shipped["coefficients"]
        )
        assert 0.0 < shipped["r_squared"] <= 1.0
    large_c = resolve_coefficients(accel.configs["teacache"], accel.adapter, pipe.transformer, "large")
    assert large_c != resolve_coefficients(accel.configs["teacache"], accel.adapter, small, "small")


def test_a_calibration_beside_the_weights_serves_only_the_model_it_was_fitted_for(tmp_path):
    from sr_plugin.accel.teacache import CALIBRATION_FILE, TeaCacheConfig, resolve_coefficients, save_beside_weights
    from sr_plugin.adapters import adapter_for

    pipe, small = tiny_pair("wan")
    small.save_pretrained(tmp_path / "small")
    pipe.transformer.save_pretrained(tmp_path / "large")
    save_beside_weights(tmp_path / "small", small, KNOWN, 0.9)
    # the large model's folder holds the small model's calibration: its config differs, so it is not used
    (tmp_path / "large" / CALIBRATION_FILE).write_text((tmp_path / "small" / CALIBRATION_FILE).read_text())
    loaded_small = type(small).from_pretrained(tmp_path / "small").eval()
    loaded_large = type(small).from_pretrained(tmp_path / "large").eval()
    adapter, config = adapter_for(pipe), TeaCacheConfig(0.1)
    assert resolve_coefficients(config, adapter, loaded_small, "small") == KNOWN
    with pytest.raises(ValueError, match="matches no published TeaCache coefficients"):
        resolve_coefficients(config, adapter, loaded_large, "large")
    with pytest.raises(ValueError, match="matches no published"):  # the ret-steps mode was not fitted
        resolve_coefficients(TeaCacheConfig(0.1, ret_steps=True), adapter, loaded_small, "small")
    (tmp_path / "small" / CALIBRATION_FILE).write_text('{"coefficients": [1, "x"]}')
    with pytest.raises(ValueError, match="TeaCache calibration .* cannot be read"):
        resolve_coefficients(config, adapter, loaded_small, "small")
