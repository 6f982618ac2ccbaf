"""The pipelines built the way diffusers' own pipeline tests build them (tests/pipelines/wan/test_wan.py,
test_wan_22.py, tests/pipelines/cogvideo/test_cogvideox.py: their dummy components and inputs, their default
schedulers, Wan2.2's `transformer_2` with and without a boundary, TI2V's `expand_timesteps`), each checked with the
switch applied to an identical copy of its transformer, which must change nothing: the common checks (save and
load, `to(dtype)`, callbacks, CFG on and off, batches); diffusers' own caches beside the switch are in
`test_diffusers_caches`. The hub's tiny T5 is replaced by a local one of the same width (nothing is downloaded)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from pipeline_helpers import CallLog, seen_through
from transformers import T5Config, T5EncoderModel

import sr_plugin
from sr_plugin.lab.tiny import eval_all, tiny_tokenizer


def text_encoder() -> T5EncoderModel:
    """A local stand-in for hf-internal-testing/tiny-random-t5 (width 32)."""
    torch.manual_seed(0)
    return T5EncoderModel(
        T5Config(
            vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8
        )
    )


def wan_transformer(channels: int = 16) -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=channels,
        out_channels=channels,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


def wan(kind: str = "wan21") -> WanPipeline:
    """Wan2.1; Wan2.2 A14B (two experts, boundary 0.875); its experts without a boundary; TI2V-5B."""
    torch.manual_seed(0)
    if kind == "ti2v":
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=48,
            in_channels=12,
            out_channels=12,
            is_residual=True,
            patch_size=2,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            temperal_downsample=[False, True, True],
        )
    else:
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
    extra = {
        "wan21": {},
        "a14b": {"transformer_2": wan_transformer(), "boundary_ratio": 0.875},
        "no-boundary": {"transformer_2": wan_transformer(), "boundary_ratio": None},
        "ti2v": {"expand_timesteps": True},
    }[kind]
    pipe = WanPipeline(
        transformer=wan_transformer(48 if kind == "ti2v" else 16),
        vae=vae,
        text_encoder=text_encoder(),
        tokenizer=tiny_tokenizer(),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        **extra,
    )
    eval_all(*[m for m in pipe.components.values() if isinstance(m, torch.nn.Module)])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cogvideox(scheduler=None, layers: int = 1) -> CogVideoXPipeline:
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=32,
        num_layers=layers,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    pipe = CogVideoXPipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder(),
        tokenizer=tiny_tokenizer(),
        scheduler=scheduler if scheduler is not None else DDIMScheduler(),
    )
    eval_all(transformer, vae, pipe.text_encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(pipe, seed: int = 0, **overrides) -> dict:
    """diffusers' dummy inputs (3 steps instead of 2, so that the switch has steps on both sides)."""
    is_wan = isinstance(pipe, WanPipeline)
    size = 32 if is_wan and pipe.config.expand_timesteps else 16
    call = {
        "prompt": "dance monkey",
        "negative_prompt": "negative" if is_wan else "",
        "generator": torch.Generator().manual_seed(seed),
        "num_inference_steps": 3,
        "guidance_scale": 6.0,
        "height": size,
        "width": size,
        "num_frames": 9 if is_wan else 8,
        "max_sequence_length": 16,
        "output_type": "pt",
    }
    return {**call, **overrides}


def identity(pipe, **kwargs):
    return sr_plugin.apply(pipe, copy.deepcopy(pipe.transformer), switch_step=1, **kwargs)


PIPELINES = {
    "wan21": lambda: wan(),
    "wan22-a14b": lambda: wan("a14b"),
    "wan22-no-boundary": lambda: wan("no-boundary"),
    "wan22-ti2v": lambda: wan("ti2v"),
    "cogvideox": lambda: cogvideox(),
}


@pytest.fixture(params=list(PIPELINES))
def built(request):
    return request.param, PIPELINES[request.param]()


def test_an_identical_copy_changes_nothing(built):
    name, pipe = built
    plain = pipe(**inputs(pipe)).frames
    handle = identity(pipe)
    assert torch.equal(pipe(**inputs(pipe)).frames, plain)
    assert handle.switch_step == 1
    handle.remove()


def test_save_load_with_the_switch_applied(built, tmp_path):
    name, pipe = built
    handle = identity(pipe)
    pipe.save_pretrained(tmp_path / "applied")
    handle.remove()
    pipe.save_pretrained(tmp_path / "plain")
    read = lambda folder: json.loads((folder / "model_index.json").read_text())  # noqa: E731
    assert read(tmp_path / "applied") == read(tmp_path / "plain")  # the switch leaves nothing in the saved pipeline
    loaded = type(pipe).from_pretrained(tmp_path / "applied")
    eval_all(*[m for m in loaded.components.values() if isinstance(m, torch.nn.Module)])
    loaded.set_progress_bar_config(disable=True)
    plain = loaded(**inputs(loaded)).frames
    identity(loaded)
    assert torch.equal(loaded(**inputs(loaded)).frames, plain)


def test_to_dtype_carries_the_small_model(built):
    name, pipe = built
    handle = identity(pipe)
    pipe.to(torch.float64)
    assert handle.router.small.dtype == torch.float64
    applied = pipe(**inputs(pipe)).frames
    handle.remove()
    assert torch.equal(applied, pipe(**inputs(pipe)).frames)


def test_callbacks_see_and_change_the_latents(built):
    name, pipe = built

    def zero_at_last(p, i, t, kwargs):
        if i == p.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    call = dict(callback_on_step_end=zero_at_last, callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    plain = pipe(**inputs(pipe, **call)).frames
    identity(pipe)
    assert torch.equal(pipe(**inputs(pipe, **call)).frames, plain)


@pytest.mark.parametrize("guidance_scale", [1.0, 6.0])
def test_cfg_on_and_off_and_batches(guidance_scale):
    for pipe in (wan(), cogvideox()):
        call = dict(guidance_scale=guidance_scale, prompt=["dance monkey", "a cat"], num_videos_per_prompt=1)
        plain = pipe(**inputs(pipe, **call)).frames
        handle = identity(pipe)
        assert torch.equal(pipe(**inputs(pipe, **call)).frames, plain)
        handle.remove()


def test_wan22_without_a_boundary_runs_every_step_on_transformer():
    pipe = wan("no-boundary")
    log = CallLog(large=pipe.transformer, second=pipe.transformer_2)
    plain = pipe(**inputs(pipe)).frames
    assert set(log.calls) == {"large"}  # diffusers: with no boundary, transformer runs every step
    small = copy.deepcopy(pipe.transformer)
    small_log = CallLog(small=small)
    handle = sr_plugin.apply(pipe, small, switch_step=2)
    out = pipe(**inputs(pipe)).frames
    log.close()
    small_log.close()
    assert torch.equal(out, plain) and small_log.calls == ["small"] * 2  # the last step, cond and uncond
    assert "second" not in log.calls and handle.segments[-1].role == "small"


def test_ti2v_takes_a_small_model_of_its_own_latent_layout_and_refuses_another():
    pipe = wan("ti2v")
    with pytest.raises(ValueError, match="in_channels=16 does not match the large transformer's 48"):
        sr_plugin.apply(pipe, wan_transformer(16))
    assert sr_plugin.handle_of(pipe) is None
    plain = pipe(**inputs(pipe)).frames
    handle = sr_plugin.apply(pipe, copy.deepcopy(pipe.transformer), schedule="small:1,large:2,small")
    assert torch.equal(pipe(**inputs(pipe)).frames, plain)  # per-token timesteps through every boundary
    assert [s.role for s in handle.segments] == ["small", "large", "small"]


SCHEDULERS = {
    "DDIMScheduler": lambda: DDIMScheduler(),  # diffusers' tests: epsilon prediction
    "DDIMScheduler-v": lambda: DDIMScheduler(prediction_type="v_prediction"),
    "DDIMScheduler-sample": lambda: DDIMScheduler(prediction_type="sample"),
    "CogVideoXDDIMScheduler": lambda: CogVideoXDDIMScheduler(),
    "CogVideoXDDIMScheduler-v-zero-snr": lambda: CogVideoXDDIMScheduler(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
    ),
    "CogVideoXDPMScheduler": lambda: CogVideoXDPMScheduler(prediction_type="v_prediction"),
    "DPMSolverMultistepScheduler": lambda: DPMSolverMultistepScheduler(),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_cogvideox_every_scheduler_and_prediction_type_with_an_identical_copy(name):
    pipe = cogvideox(SCHEDULERS[name]())
    for order in ("large:1,small", "small:1,large:2,small"):
        plain = pipe(**inputs(pipe)).frames
        handle = sr_plugin.apply(pipe, copy.deepcopy(pipe.transformer), schedule=order)
        assert torch.equal(pipe(**inputs(pipe)).frames, plain), order
        handle.remove()


@pytest.mark.parametrize("large_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("small_type", ["epsilon", "v_prediction", "sample"])
def test_cogvideox_mapping_between_prediction_types_reproduces_large_only(large_type, small_type):
    """A small model that predicts another quantity (its own scheduler's prediction_type), on another latent scale
    and schedule: mapped in and out, it reproduces large only to float tolerance in every order."""
    pipe = cogvideox(DDIMScheduler(prediction_type=large_type))
    large_only = pipe(**inputs(pipe, output_type="latent")).frames
    small_schedule = DDIMScheduler.from_config(
        pipe.scheduler.config, prediction_type=small_type, beta_end=0.02
    )  # another noise schedule
    other = seen_through(pipe, 1.3 * pipe.vae.config.scaling_factor, small_schedule)
    for order in ("large:1,small", "small:2,large"):
        handle = sr_plugin.apply(
            pipe,
            other,
            schedule=order,
            small_vae_scaling_factor=1.3 * pipe.vae.config.scaling_factor,
            small_scheduler=small_schedule,
        )
        mapped = pipe(**inputs(pipe, output_type="latent")).frames
        handle.remove()
        scale = large_only.abs().max().item()
        assert torch.allclose(mapped, large_only, atol=1e-4 * scale, rtol=0), (order, (mapped - large_only).abs().max())


def test_a_scheduler_without_alphas_cumprod_is_still_a_clear_error():
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = cogvideox(FlowMatchEulerDiscreteScheduler())
    with pytest.raises(ValueError, match="has no `alphas_cumprod`"):
        sr_plugin.apply(pipe, copy.deepcopy(pipe.transformer))
    assert sr_plugin.handle_of(pipe) is None
