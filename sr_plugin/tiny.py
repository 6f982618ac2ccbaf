"""Tiny Wan and CogVideoX pipelines built in code with random weights: no download, seconds on a CPU.

Shared by the tests and the benchmarks (the demo runs the trained families of `sr_plugin.trained`). Each
builder returns ``(pipe, small_transformer)``: a real diffusers pipeline whose transformer is a tiny "large"
model, and a tinier "small" model of the same family
(the CogVideoX pair mirrors 5b -> 2b: rotary large, sincos small, 5b latent scale and noise schedule).
Every module is in eval mode (T5's dropout would otherwise make two identical calls differ).
"""

from __future__ import annotations

import string
from typing import Any

import torch

#: Call arguments that keep the tiny runs small (9 frames -> 3 latent frames, 64 x 64 pixels).
TINY_CALL: dict[str, dict[str, Any]] = {
    "wan": {"height": 64, "width": 64, "num_frames": 9},
    "cogvideox": {"height": 64, "width": 64, "num_frames": 9},
}

FAMILIES = ("wan", "cogvideox")


def tiny_tokenizer() -> Any:
    """A character-level tokenizer built with `tokenizers` (T5's ids: pad 0, eos 1)."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _eval(*modules: torch.nn.Module) -> None:
    for m in modules:
        m.eval().requires_grad_(False)


def tiny_wan_transformer(num_layers: int, num_heads: int, seed: int) -> Any:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=num_heads, attention_head_dim=12, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=2 * 12 * num_heads, num_layers=num_layers,
        rope_max_seq_len=32,
    )


def tiny_wan(seed: int = 0) -> tuple[Any, Any]:
    """WanPipeline (UniPC flow-matching, flow shift 3.0 as published) with a 4-layer large, 2-layer small."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    ))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    large = tiny_wan_transformer(num_layers=4, num_heads=4, seed=seed + 2)
    small = tiny_wan_transformer(num_layers=2, num_heads=2, seed=seed + 3)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    _eval(text_encoder, vae, large, small)
    pipe = WanPipeline(tokenizer=tiny_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=large,
                       scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe, small


def tiny_cogvideox_transformer(num_layers: int, num_heads: int, rotary: bool, seed: int) -> Any:
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=num_heads, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=32, num_layers=num_layers, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        max_text_seq_length=226, use_rotary_positional_embeddings=rotary,
    )


def cogvideox_scheduler(snr_shift_scale: float) -> Any:
    """CogVideoX's published DDIM scheduler config; 5b uses snr_shift_scale 1.0, 2b 3.0."""
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
        snr_shift_scale=snr_shift_scale, timestep_spacing="trailing",
    )


def tiny_cogvideox(seed: int = 0) -> tuple[Any, Any]:
    """CogVideoXPipeline shaped like 5b (rotary, VAE scale 0.7, SNR shift 1.0) with a 2b-like small model.
    Both have at least two blocks (First Block Cache needs a first block and a tail)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    ))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                 norm_num_groups=2, temporal_compression_ratio=4, scaling_factor=0.7)
    large = tiny_cogvideox_transformer(num_layers=3, num_heads=4, rotary=True, seed=seed + 2)
    small = tiny_cogvideox_transformer(num_layers=2, num_heads=2, rotary=False, seed=seed + 3)
    _eval(text_encoder, vae, large, small)
    pipe = CogVideoXPipeline(tokenizer=tiny_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=large,
                             scheduler=cogvideox_scheduler(1.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe, small


def tiny_pair(family: str, seed: int = 0) -> tuple[Any, Any]:
    """``(pipe, small)`` for ``family`` in FAMILIES."""
    if family == "wan":
        return tiny_wan(seed)
    if family == "cogvideox":
        return tiny_cogvideox(seed)
    raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
