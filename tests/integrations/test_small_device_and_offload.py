"""The small model on its own device and dtype, offload_large, and combinations refused before generation."""

from __future__ import annotations

import copy
import json
import pathlib
import subprocess
import sys

import pytest
import torch
from pipeline_helpers import CallLog, run

import sr_plugin


def test_small_device_gets_inputs_in_its_device_and_dtype_and_hands_back(pair, family):
    """On a CPU-only machine the move is proven with a float64 small model on an explicit device."""
    pipe, _ = pair
    baseline = run(pipe, family)
    small = copy.deepcopy(pipe.transformer).to(torch.float64)
    sr_plugin.apply(pipe, small, switch_step=3, small_device="cpu")
    log = CallLog(small=small)
    out = run(pipe, family)
    log.close()
    for kwargs in log.kwargs:
        for name in ("hidden_states", "encoder_hidden_states"):
            assert kwargs[name].device == torch.device("cpu") and kwargs[name].dtype == torch.float64
    assert out.dtype == baseline.dtype and torch.allclose(out, baseline, atol=1e-4)
    pipe.to(torch.float32)  # with small_device, the pipeline's moves leave the small model where it is
    assert small.dtype == torch.float64


def test_offload_large_is_a_no_op_off_the_gpu_and_checks_its_argument(pair, family):
    pipe, small = pair
    expected = run(pipe, family, output_type="latent")
    handle = sr_plugin.apply(
        pipe, copy.deepcopy(pipe.transformer), switch_step=3, offload_large=True
    )  # identity: exact
    assert torch.equal(run(pipe, family), expected)
    handle.remove()
    assert "check_inputs" not in vars(pipe)
    with pytest.warns(UserWarning, match="offload_large=True does nothing while the large transformer is on cpu"):
        handle = sr_plugin.apply(pipe, small, switch_step=3, offload_large=True)
    assert handle.router.offloader is not None and not handle.router.offloader.offloaded
    run(pipe, family)
    assert next(pipe.transformer.parameters()).device.type == "cpu"
    handle.remove()
    with pytest.raises(TypeError, match="offload_large"):
        sr_plugin.apply(pipe, small, offload_large="yes")


def test_para_attn_wan_context_parallelism_is_refused():
    """para-attn marks a parallelized transformer with `_is_parallelized`; its Wan adapter is broken on
    diffusers >= 0.35 (RoPE returns a tuple): refused with the call to use instead."""
    from sr_plugin.lab.tiny import tiny_wan

    pipe, small = tiny_wan()
    pipe.transformer._is_parallelized = True
    before = dict(vars(pipe))
    with pytest.raises(ValueError, match="enable_parallelism"):
        sr_plugin.apply(pipe, small)
    assert dict(vars(pipe)) == before


def test_gpu_benchmark_script_runs_end_to_end_on_cpu_with_tiny_in_two_resumed_calls(tmp_path: pathlib.Path):
    """A first call that ran some rows (as one stopped by its time budget would), a second one resuming from its
    JSON: every row once, the first call's rows kept as they were."""
    script = pathlib.Path(__file__).parents[2] / "benchmarks" / "gpu_bench.py"
    first, out = tmp_path / "first.json", tmp_path / "bench.json"
    common = [sys.executable, str(script), "--tiny", "--steps", "4", "5"]
    result = subprocess.run(
        [*common, "--json", str(first), "--configs", "large", "sr", "teacache"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    kept = {
        f: {n: r for n, r in fam["configs"].items() if "wall_s" in r}
        for f, fam in json.loads(first.read_text())["families"].items()
    }
    assert sum(map(len, kept.values())) == 6
    result = subprocess.run(
        [*common, "--json", str(out), "--resume", str(first)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rows to run: about" in result.stdout
    data = json.loads(out.read_text())
    for family, fam in data["families"].items():
        configs = fam["configs"]
        assert set(configs) == {
            "large",
            "sr",
            "compile",
            "sr+compile",
            "small-first",
            "sandwich",
            "small-first+compile",
            "sandwich+compile",
            "teacache",
            "sr+teacache",
            "pab",
            "sr+all",
            "sr-never",
            "sr+offload",
            "sr+flash",
            "sr+cudnn",
            "float8",
            "sr+float8",
        } | ({"wan22-both", "wan22-sr"} if family == "wan" else set())
        assert all("error" not in rec and rec["wall_s"] > 0 for rec in configs.values())
        assert all(configs[n] == r for n, r in kept.get(family, {}).items())  # kept as the first call left them
        assert configs["sr"]["switch_step"] == 2 and configs["sr-never"]["switch_step"] is None
        assert 0 < configs["teacache"]["teacache_skipped_fraction"] < 1
        passes = configs["sr+teacache"]["block_passes"]
        assert passes["computed"] > 0 and passes["skipped"] > 0
        assert {"r", "ideal", "measured", "measured_over_ideal"} <= set(fam["summary"]["sr"])
        for row in ("small-first", "sandwich", "small-first+compile", "sandwich+compile"):
            assert {"schedule", "ideal", "measured_over_ideal"} <= set(fam["summary"][row])
        assert [seg[0] for seg in configs["sandwich"]["segments"]] == ["large", "small", "large"]
        for row in ("float8", "sr+float8"):  # quantized copies, compiled, the warm-up apart, against bf16 compiled
            assert configs[row]["quantization"].startswith("int8 weight-only") and "compile_warmup_s" in configs[row]
            assert "vs_bf16_compiled" in fam["summary"][row]
        assert configs["pab"]["probe"]["pab_large_gib"] > 0 and configs["sr+all"]["probe"]["pab_small_gib"] > 0
        if family == "wan":  # (diffusers 0.42's CogVideoX processors take no attention backend)
            assert configs["sr+flash"]["small_backends"] == ["AttentionBackendName._NATIVE_MATH"]
            assert configs["wan22-sr"]["switch_reason"] == "max_switch_step"  # the boundary, without the 2nd expert
            assert "wan22-sr" in fam["summary"]
    assert data["resumed_from"]["rows"] == sum(map(len, kept.values()))
    assert "meas/ideal" in result.stdout  # the table at the end


def test_offload_large_composes_with_model_cpu_offload(pair, family):
    """Under enable_model_cpu_offload the offload sequence already takes the large model off when the small one
    runs: offload_large adds nothing, and the output is that of the switch alone."""
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small, switch_step=3)
    expected = run(pipe, family)
    handle.remove()
    pipe.enable_model_cpu_offload(device="cpu")
    handle = sr_plugin.apply(pipe, small, switch_step=3, offload_large=True)
    assert torch.equal(run(pipe, family), expected)
    assert not handle.router.offloader.offloaded and any(h.model is small for h in pipe._all_hooks)


class SpyOffloader:
    """Stands in for the CUDA offloader (which is a no-op on CPU) and logs where the switch calls it."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.offloaded = False
        self.in_flight = False

    def offload(self) -> None:
        self.log.append("offload")
        self.offloaded = True

    def prefetch(self) -> None:
        if self.offloaded and not self.in_flight:
            self.log.append("prefetch")
            self.in_flight = True

    def wait(self) -> None:
        if self.in_flight:
            self.log.append("wait")
            self.in_flight = self.offloaded = False

    def restore(self) -> None:
        self.prefetch()
        self.wait()

    def release(self) -> None:
        self.log.append("release")


def test_offload_large_is_queued_at_the_switch_and_brought_back_before_the_next_call(pair, family):
    """Where offload_large acts, checked on CPU: the large model leaves right after its last step (before the
    small model's first call), comes back at the start of the next call before any model runs, and is
    released by remove; without the switch it never leaves."""
    from pipeline_helpers import CallLog

    pipe, small = pair
    handle = sr_plugin.apply(pipe, small, switch_step=3, offload_large=True)
    log = CallLog(large=pipe.transformer, small=small)
    handle.router.offloader = SpyOffloader(log.calls)
    per_step = 2 if family == "wan" else 1
    for call in range(2):
        start = len(log.calls)
        run(pipe, family)
        events = log.calls[start:]
        first_model = min(events.index("large"), len(events))
        if call:  # back before the pipeline reads its device, the device waiting before the first large step
            assert events[:first_model] == ["prefetch", "wait"]
        models = [e for e in events if e in ("large", "small")]
        assert models == ["large"] * 3 * per_step + ["small"] * 7 * per_step
        offload_at = events.index("offload")
        assert events.count("offload") == 1
        assert events[offload_at - 1] == "large" and "large" not in events[offload_at:]
        assert "small" not in events[:offload_at]
    log.close()
    spy = handle.router.offloader
    handle.remove()
    assert spy.log[-1] == "release"
