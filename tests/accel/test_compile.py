"""Regional torch.compile of both transformers, with the switch and the caches outside compiled regions."""

from __future__ import annotations

import pytest
import torch
from diffusers import FirstBlockCacheConfig, WanTransformer3DModel
from pipeline_helpers import LINEAR, MIX, run

import sr_plugin
from sr_plugin import PABConfig, TeaCacheConfig
from sr_plugin.lab.tiny import tiny_pair, tiny_wan


def test_compiled_matches_eager(family):
    """Inductor on the CPU: the first call compiles both models' blocks (tens of seconds on 2 cores)."""
    torch._dynamo.reset()
    pipe, small = tiny_pair(family)
    sr_plugin.apply(pipe, small, switch_step=3)
    eager = run(pipe, family, steps=6)
    accel = sr_plugin.accelerate(pipe, compile=True)
    compiled = run(pipe, family, steps=6)
    assert torch.allclose(compiled, eager, atol=1e-4, rtol=1e-4), (compiled - eager).abs().max()
    accel.remove()
    assert torch.equal(run(pipe, family, steps=6), eager)
    assert all("forward" not in vars(b) for b in pipe.transformer.modules())


@pytest.mark.parametrize("stack", ["compile", "compile+teacache+pab"])
def test_second_call_that_switches_does_not_recompile(family, stack):
    torch._dynamo.reset()
    pipe, small = tiny_pair(family)
    handle = sr_plugin.apply(pipe, small)
    extra = (
        {}
        if stack == "compile"
        else {"teacache": TeaCacheConfig(MIX[family], LINEAR), "pab": PABConfig(2, 2, (0, 1000))}
    )
    sr_plugin.accelerate(pipe, compile={"backend": "eager"}, **extra)  # dynamo's guards without inductor's cost
    warm = run(pipe, family)  # warm-up: compiles the large and the small model's blocks
    assert handle.switch_step is not None
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = run(pipe, family)
        run(pipe, family, seed=1, steps=12)  # another seed and step count: still no recompile
    assert torch.equal(again, warm)
    # The detector works: new latent shapes do recompile.
    with pytest.raises(Exception, match="(?i)recompil"), torch._dynamo.config.patch(error_on_recompile=True):
        run(pipe, family, height=96)


def test_compile_on_a_model_that_cannot_be_compiled_is_refused():
    pipe, _ = tiny_wan()
    pipe.transformer = WanTransformer3DModel.from_config({**pipe.transformer.config, "num_layers": 0}).eval()
    with pytest.raises(ValueError, match="no transformer blocks"):
        sr_plugin.accelerate(pipe, compile=True)
    pipe, _ = tiny_wan()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(ValueError, match="already wrapped"):
        sr_plugin.accelerate(pipe, compile=True)
    assert "_sr_plugin_accel" not in vars(pipe) and "_sr_plugin_calls" not in vars(pipe)


@pytest.mark.parametrize("value", [0, 1, "max", 0.0])
def test_compile_takes_a_bool_none_or_options_only(value):
    from sr_plugin.accel import accelerations_of
    from sr_plugin.lab.tiny import tiny_wan

    pipe, _ = tiny_wan()
    with pytest.raises(TypeError, match="compile must be True, False, None or a dict"):
        sr_plugin.accelerate(pipe, compile=value)
    assert accelerations_of(pipe) is None
    handle = sr_plugin.accelerate(pipe, compile=None, pab=True)
    assert "compile" not in accelerations_of(pipe).configs
    handle.remove()


@pytest.mark.parametrize("schedule", ["large:3,small:6,large", "small:3,large:7,small"])
def test_a_sandwich_crosses_every_boundary_without_recompiling(family, schedule):
    """Each model's blocks compile once; handing over and back (with the caches reset at each boundary) reuses
    the graphs, on the warm-up call's schedule and on another step count."""
    torch._dynamo.reset()
    pipe, small = tiny_pair(family)
    handle = sr_plugin.apply(pipe, small, schedule=schedule)
    sr_plugin.accelerate(
        pipe, compile={"backend": "eager"}, teacache=TeaCacheConfig(MIX[family], LINEAR), pab=PABConfig(2, 2, (0, 1000))
    )
    warm = run(pipe, family)
    assert len(handle.segments) == 3
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = run(pipe, family)
        run(pipe, family, seed=1, steps=12)
    assert torch.equal(again, warm)
