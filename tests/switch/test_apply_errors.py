"""Bad input: a clear error from `apply`, before any generation, with the pipeline left untouched."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler

import sr_plugin
from sr_plugin.lab.tiny import tiny_cogvideox, tiny_cogvideox_transformer, tiny_pair, tiny_wan, tiny_wan_transformer


def wan_small(**overrides):
    config = dict(tiny_wan_transformer(num_layers=1, num_heads=2, seed=0).config)
    config.update(overrides)
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_config(config).eval()


@pytest.mark.parametrize(
    "small_factory,exc,match",
    [
        (lambda: tiny_cogvideox_transformer(1, 2, False, 0), TypeError, "must be a WanTransformer3DModel"),
        (lambda: wan_small(in_channels=8, out_channels=8), ValueError, "in_channels"),
        (lambda: wan_small(patch_size=(1, 4, 4)), ValueError, "patch_size"),
        (lambda: wan_small(text_dim=16), ValueError, "text_dim"),
        (lambda: torch.zeros(3), TypeError, "torch.nn.Module"),
    ],
)
def test_wrong_small_model(small_factory, exc, match):
    pipe, _ = tiny_wan()
    before = dict(vars(pipe))
    with pytest.raises(exc, match=match):
        sr_plugin.apply(pipe, small_factory())
    assert dict(vars(pipe)) == before


def test_cogvideox_wrong_small_model():
    pipe, _ = tiny_cogvideox()
    with pytest.raises(TypeError, match="CogVideoXTransformer3DModel"):
        sr_plugin.apply(pipe, tiny_wan_transformer(1, 2, 0))
    with pytest.raises(ValueError, match="text_embed_dim"):
        from diffusers import CogVideoXTransformer3DModel

        config = {**tiny_cogvideox_transformer(1, 2, False, 0).config, "text_embed_dim": 16}
        sr_plugin.apply(pipe, CogVideoXTransformer3DModel.from_config(config))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.5}, "delta"),
        ({"min_switch_step": 8, "max_switch_step": 4}, "min_switch_step"),
        ({"switch_step": -1}, "switch_step"),
    ],
)
def test_bad_switch_options(kwargs, match):
    pipe, small = tiny_wan()
    before = dict(vars(pipe))
    with pytest.raises(ValueError, match=match):
        sr_plugin.apply(pipe, small, **kwargs)
    assert dict(vars(pipe)) == before


def test_unsupported_pipeline_lists_the_supported_ones():
    from diffusers import DiffusionPipeline

    with pytest.raises(TypeError, match="WanPipeline, CogVideoXPipeline"):
        sr_plugin.apply(DiffusionPipeline(), tiny_wan_transformer(1, 2, 0))


def test_pipeline_without_transformer():
    pipe, small = tiny_wan()
    pipe.transformer = None
    with pytest.raises(ValueError, match="no transformer"):
        sr_plugin.apply(pipe, small)


def test_latent_space_options_are_checked():
    pipe, small = tiny_cogvideox()
    with pytest.raises(ValueError, match="small_vae_scaling_factor"):
        sr_plugin.apply(pipe, small, small_vae_scaling_factor=-1.0)
    with pytest.raises(ValueError, match="small_scheduler"):
        sr_plugin.apply(pipe, small, small_scheduler=object())
    wan, wan_small_model = tiny_wan()
    with pytest.raises(TypeError, match="hands over unchanged"):
        sr_plugin.apply(wan, wan_small_model, small_scheduler=CogVideoXDDIMScheduler())


def test_wrong_scheduler_family_is_refused_before_generation():
    pipe, small = tiny_cogvideox()
    sr_plugin.apply(pipe, small)
    pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config)
    del pipe.scheduler.alphas_cumprod  # a scheduler the pipeline can call but whose noise levels cannot be read
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="has no `alphas_cumprod`"):
        pipe(prompt="a cat", num_inference_steps=3, num_frames=9, output_type="latent")
    assert calls == []


def test_family_options_are_the_adapters_to_validate():
    """family_options carries a family's own hand-off options; today's keywords stay as shorthands and give the
    same hand-off."""
    from pipeline_helpers import run

    pipe, small = tiny_pair("cogvideox")
    handle = sr_plugin.apply(pipe, small, switch_step=3, small_vae_scaling_factor=1.15258426)
    expected = run(pipe, "cogvideox")
    handle.remove()
    handle = sr_plugin.apply(pipe, small, switch_step=3, family_options={"small_vae_scaling_factor": 1.15258426})
    assert torch.equal(run(pipe, "cogvideox"), expected)
    handle.remove()
    before = dict(vars(pipe))
    for bad, error, message in (
        ({"x": 1}, TypeError, "unknown CogVideoX family option.*known: small_vae"),
        ({"small_vae_scaling_factor": -1}, ValueError, "positive number"),
        ([("small_scheduler", 1)], TypeError, "must be a mapping"),
    ):
        with pytest.raises(error, match=message):
            sr_plugin.apply(pipe, small, family_options=bad)
    with pytest.raises(TypeError, match="both as a keyword and in family_options"):
        sr_plugin.apply(pipe, small, small_vae_scaling_factor=1.0, family_options={"small_vae_scaling_factor": 1.0})
    assert dict(vars(pipe)) == before
    wan, wan_small = tiny_pair("wan")
    with pytest.raises(TypeError, match="unknown Wan family option.*known: none"):
        sr_plugin.apply(wan, wan_small, family_options={"small_scheduler": 1})


def test_numpy_scalars_are_accepted_where_python_numbers_are():
    import numpy as np
    from pipeline_helpers import run

    pipe, small = tiny_pair("wan")
    handle = sr_plugin.apply(pipe, small, switch_step=np.int64(3))
    run(pipe, "wan")
    assert handle.switch_step == 3
    handle.remove()
    sr_plugin.apply(pipe, small, delta=np.float32(0.01)).remove()


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"small_vae_scaling_factor": True}, ValueError, "small_vae_scaling_factor must be a positive number"),
        ({"small_vae_scaling_factor": float("inf")}, ValueError, "small_vae_scaling_factor must be a positive number"),
        ({"small_device": "meta"}, ValueError, "small_device='meta' would drop"),
        ({"small_device": "cuda:7"}, ValueError, "small_device='cuda:7': this machine has"),
        ({"small_device": "nonsense"}, ValueError, "is not a device"),
    ],
)
def test_inputs_accepted_before_are_refused_with_a_message(kwargs, error, message):
    pipe, small = tiny_pair("cogvideox")
    before = dict(vars(pipe))
    with pytest.raises(error, match=message):
        sr_plugin.apply(pipe, small, **kwargs)
    assert dict(vars(pipe)) == before


def test_fbcache_nan_is_refused():
    pipe, _ = tiny_pair("wan")
    with pytest.raises(ValueError, match="fbcache must be a threshold"):
        sr_plugin.accelerate(pipe, fbcache=float("nan"))


def test_a_scheduler_sr_plugin_cannot_use_is_refused_at_apply_and_a_refused_call_reports_no_steps():
    from diffusers import FlowMatchHeunDiscreteScheduler
    from pipeline_helpers import run

    pipe, small = tiny_pair("wan")
    original = pipe.scheduler
    pipe.scheduler = FlowMatchHeunDiscreteScheduler()
    before = dict(vars(pipe))
    with pytest.raises(ValueError, match="has order 2"):
        sr_plugin.apply(pipe, small, switch_step=3)
    assert dict(vars(pipe)) == before
    pipe.scheduler = original
    handle = sr_plugin.apply(pipe, small, switch_step=3)
    run(pipe, "wan")
    assert handle.switch_step == 3 and len(handle.trace) == 10
    pipe.scheduler = FlowMatchHeunDiscreteScheduler()  # swapped after apply: refused at the call
    with pytest.raises(ValueError, match="has order 2"):
        run(pipe, "wan")
    assert handle.switch_step is None and handle.trace == [] and handle.switch is None


def test_a_text_length_the_sincos_small_model_cannot_take_is_refused_before_the_first_step():
    """It used to run the large steps, then die at the switch on a tensor-size mismatch."""
    from pipeline_helpers import CallLog, run

    pipe, small = tiny_pair("cogvideox")
    assert not small.config.use_rotary_positional_embeddings
    handle = sr_plugin.apply(pipe, small, switch_step=3)
    log = CallLog(large=pipe.transformer, small=small)
    with pytest.raises(
        ValueError, match="takes exactly max_text_seq_length=226: call the pipeline with max_sequence_length=226"
    ):
        run(pipe, "cogvideox", max_sequence_length=24)
    assert log.calls == []
    run(pipe, "cogvideox")  # the length it takes: runs and switches
    log.close()
    assert handle.switch_step == 3
    handle.remove()
    assert "encode_prompt" not in vars(pipe)


def test_a_whole_pipeline_as_the_small_model_points_at_its_transformer():
    pipe, small = tiny_pair("wan")
    other, _ = tiny_pair("wan")
    with pytest.raises(
        TypeError,
        match=r"small_transformer is a WanPipeline, a whole pipeline: give its "
        r"transformer, sr_plugin.apply\(pipe, small_pipe.transformer\)",
    ):
        sr_plugin.apply(pipe, other)
