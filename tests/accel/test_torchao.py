"""SR with torchao-quantized transformers (int8 weight-only on CPU): the hand-off is exact against the pipeline
swapping the model itself, and TeaCache and PAB still act per model."""

from __future__ import annotations

import pytest
import torch
from pipeline_helpers import run

import sr_plugin
from sr_plugin import PABConfig, TeaCacheConfig
from sr_plugin.lab.tiny import tiny_pair

torchao = pytest.importorskip("torchao")  # a test extra (pyproject): installed in CI
from torchao.quantization import Int8WeightOnlyConfig, quantize_  # noqa: E402

K = 4


def swapping_reference(pipe, small):
    """The pipeline itself puts the small model in place after step K - 1 (Wan: same latent space)."""
    large = pipe.transformer

    def swap(p, i, t, kwargs):
        if i == K - 1:
            p.transformer = small
        return kwargs

    out = run(pipe, "wan", callback_on_step_end=swap)
    pipe.transformer = large
    return out


@pytest.mark.parametrize("which", ["small", "both"])
def test_quantized_models_hand_off_exactly(which):
    pipe, small = tiny_pair("wan")
    quantize_(small, Int8WeightOnlyConfig())
    if which == "both":
        quantize_(pipe.transformer, Int8WeightOnlyConfig())
    weight = small.blocks[0].attn1.to_q.weight
    assert type(weight) not in (torch.Tensor, torch.nn.Parameter)  # torchao's quantized tensor subclass
    expected = swapping_reference(pipe, small)
    handle = sr_plugin.apply(pipe, small, switch_step=K)
    assert torch.equal(run(pipe, "wan"), expected)
    accel = sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(0.0, "identity"), pab=PABConfig(1, 1, (0, 1000)))
    assert torch.equal(run(pipe, "wan"), expected)  # caches that never reuse change nothing
    accel.remove()
    sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(1.5, "identity"), pab=PABConfig(2, 2, (0, 1000)))
    run(pipe, "wan")
    for role in ("large", "small"):
        steps = [r for r in handle.trace if r.model == role]
        assert "skipped" in {v for r in steps for v in r.cache.values()}, role
    small_steps = [r for r in handle.trace if r.model == "small"]
    assert small_steps[0].cache == {"cond": "computed", "uncond": "computed"}  # its own state: fresh at the switch
