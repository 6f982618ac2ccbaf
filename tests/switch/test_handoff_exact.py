"""Hand-offs where the math says the outputs must be equal (or equal to float tolerance)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel, WanPipeline
from pipeline_helpers import STEPS, CallLog, run

import sr_plugin
from sr_plugin.lab.tiny import cogvideox_scheduler


@pytest.mark.parametrize("mode", [{"switch_step": 0}, {"switch_step": 4}, {"switch_step": STEPS - 1}, {}])
def test_identity_handoff_is_bit_exact(pair, family, mode):
    """With an exact copy of the large model as the "small" model, every switch point reproduces the plain
    pipeline (the model itself is refused as its own small model)."""
    pipe, _ = pair
    baseline = run(pipe, family, output_type="pt")
    handle = sr_plugin.apply(pipe, copy.deepcopy(pipe.transformer), **mode)
    assert torch.equal(run(pipe, family, output_type="pt"), baseline)
    roles = [r.model for r in handle.trace]
    if mode == {"switch_step": 0}:  # the small model alone: no hand-off from the large one
        assert roles == ["small"] * STEPS and handle.switch_step is None
    else:
        k = mode.get("switch_step", handle.switch_step)
        assert k is not None and roles == ["large"] * k + ["small"] * (STEPS - k) and handle.switch_step == k


def test_small_model_changes_the_output(pair, family):
    """The non-identity hand-off really runs the small model (else the identity tests prove nothing)."""
    pipe, small = pair
    baseline = run(pipe, family)
    sr_plugin.apply(pipe, small, switch_step=4)
    assert not torch.allclose(run(pipe, family), baseline, atol=1e-3)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_wan_fixed_switch_equals_diffusers_two_expert_path(k):
    from sr_plugin.lab.tiny import tiny_wan

    pipe, small = tiny_wan()
    pipe.scheduler.set_timesteps(STEPS)
    t = pipe.scheduler.timesteps
    ratio = float(t[k - 1] + t[k]) / 2 / pipe.scheduler.config.num_train_timesteps
    reference = run(wan22(pipe, small, ratio), "wan", output_type="pt")

    handle = sr_plugin.apply(pipe, small, switch_step=k)
    log = CallLog(large=pipe.transformer, small=small)
    out = run(pipe, "wan", output_type="pt")
    log.close()
    assert torch.equal(out, reference)
    assert handle.switch_step == k
    assert log.calls == ["large"] * 2 * k + ["small"] * 2 * (STEPS - k)  # cond + uncond on one model per step


def wan22(pipe, transformer_2, ratio):
    two = WanPipeline(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        transformer=pipe.transformer,
        transformer_2=transformer_2,
        scheduler=pipe.scheduler,
        boundary_ratio=ratio,
    )
    two.set_progress_bar_config(disable=True)
    return two


def boundary_at(pipe, k):
    """A boundary ratio that puts steps < k on the high-noise expert and the rest on the low-noise one."""
    pipe.scheduler.set_timesteps(STEPS)
    t = pipe.scheduler.timesteps
    return float(t[k - 1] + t[k]) / 2 / pipe.scheduler.config.num_train_timesteps


def test_wan22_without_its_low_noise_expert_equals_diffusers_with_the_small_model_as_that_expert():
    """The oracle: the high-noise expert alone plus a fixed switch at the boundary is diffusers' own two-expert
    pipeline with transformer_2=small (guidance_scale_2 included); by default the switch comes at the
    boundary at the latest, and a fixed switch after it is refused."""
    from sr_plugin.lab.tiny import tiny_wan

    pipe, small = tiny_wan()
    b = 4
    ratio = boundary_at(pipe, b)
    reference = run(wan22(pipe, small, ratio), "wan", output_type="pt", guidance_scale_2=2.5)
    high_only = wan22(pipe, None, ratio)
    handle = sr_plugin.apply(high_only, small, switch_step=b)
    assert torch.equal(run(high_only, "wan", output_type="pt", guidance_scale_2=2.5), reference)
    handle.remove()
    handle = sr_plugin.apply(high_only, small, delta=1e-9)  # the rule alone would never switch
    run(high_only, "wan")
    assert handle.switch_step == b and handle.switch.reason == "max_switch_step" and handle.switch.max_switch_step == b
    handle.remove()
    handle = sr_plugin.apply(high_only, small, switch_step=b + 1)
    with pytest.raises(ValueError, match="low-noise expert .*transformer_2.* is not loaded"):
        run(high_only, "wan")


def test_wan22_with_both_experts_follows_diffusers_until_the_switch():
    """Steps before the boundary on the high-noise expert, then the low-noise one, then, from the switch, the
    small model in both slots: against the pipeline swapping the models itself."""
    from sr_plugin.lab.tiny import tiny_wan

    pipe, small = tiny_wan()
    low_noise, _ = tiny_wan(seed=7)
    b, k = 3, 6
    ratio = boundary_at(pipe, b)

    def swap(p, i, t, kwargs):
        if i == k - 1:
            p.transformer_2 = small
            p.transformer = small
        return kwargs

    reference_pipe = wan22(pipe, low_noise.transformer, ratio)
    reference = run(reference_pipe, "wan", output_type="pt", callback_on_step_end=swap, guidance_scale_2=3.0)
    two = wan22(pipe, low_noise.transformer, ratio)
    log = CallLog(large=two.transformer, low=low_noise.transformer, small=small)
    handle = sr_plugin.apply(two, small, switch_step=k)
    out = run(two, "wan", output_type="pt", guidance_scale_2=3.0)
    log.close()
    assert torch.equal(out, reference)
    assert log.calls == ["large"] * 2 * b + ["low"] * 2 * (k - b) + ["small"] * 2 * (STEPS - k)
    assert handle.switch_step == k


# --------------------------------------------------------------------------- CogVideoX latent-space mapping
def test_cogvideox_published_2b_defaults_for_a_sincos_small_model():
    """A 2b-style small model with a 5b-style large one gets the published 2b scale and SNR shift."""
    from sr_plugin.lab.tiny import tiny_cogvideox

    pipe, small = tiny_cogvideox()
    handle = sr_plugin.apply(pipe, small, switch_step=2)
    run(pipe, "cogvideox", steps=4)
    space = handle.router.handoff.space
    assert space.c == pytest.approx(1.15258426 / 0.7)
    assert torch.equal(space.abar_small, cogvideox_scheduler(3.0).alphas_cumprod.double())
    assert not space.is_identity


def test_cogvideox_small_model_gets_its_own_positional_input():
    from sr_plugin.lab.tiny import tiny_cogvideox, tiny_cogvideox_transformer

    pipe, sincos_small = tiny_cogvideox()
    config = tiny_cogvideox_transformer(num_layers=1, num_heads=2, rotary=True, seed=7).config
    rotary_small = CogVideoXTransformer3DModel.from_config({**config, "attention_head_dim": 32}).eval()
    for small, expect_rotary in ((sincos_small, False), (rotary_small, True)):
        handle = sr_plugin.apply(pipe, small, switch_step=1)
        log = CallLog(large=pipe.transformer, small=small)
        run(pipe, "cogvideox", steps=3)
        log.close()
        handle.remove()
        large_rope = log.kwargs[0]["image_rotary_emb"]
        small_rope = [kw["image_rotary_emb"] for name, kw in zip(log.calls, log.kwargs) if name == "small"]
        assert large_rope is not None and len(small_rope) == 2
        for rope in small_rope:
            if expect_rotary:
                assert rope[0].shape[-1] == 32 and large_rope[0].shape[-1] == 16  # its own head size
            else:
                assert rope is None


def test_small_model_in_another_dtype_gets_its_dtype_and_hands_back_the_pipeline_dtype(pair, family):
    pipe, _ = pair
    baseline = run(pipe, family)
    small = copy.deepcopy(pipe.transformer).to(torch.float64)
    sr_plugin.apply(pipe, small, switch_step=3)
    log = CallLog(small=small)
    out = run(pipe, family)
    log.close()
    assert log.kwargs and all(kw["hidden_states"].dtype == torch.float64 for kw in log.kwargs)
    assert all(kw["encoder_hidden_states"].dtype == torch.float64 for kw in log.kwargs)
    assert out.dtype == baseline.dtype and small.dtype == torch.float64
    assert torch.allclose(out, baseline, atol=1e-4)
