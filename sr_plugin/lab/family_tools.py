"""What the tools know of each family besides the adapter's contract: its tiny pipeline built in code (the tests
and the CPU benchmark), its published full sizes (the GPU benchmark), the sizes its pipeline takes and the
frames per second of its videos (the command line).

The adapter (`sr_plugin.adapters`) is what the switch and the accelerations read; this is the lab's
description of the same family, registered under the same key with `register_tools`. A family without one
still works with `apply` and `accelerate`; it only has no tiny pipeline and no GPU benchmark rows.
"""

from __future__ import annotations

import math
import string
from typing import Any

import torch

from ..adapters import cogvideox, wan

#: The registered tool descriptions by family key (`register_tools`).
_TOOLS: dict[str, FamilyTools] = {}


def register_tools(cls: type[FamilyTools]) -> type[FamilyTools]:
    """Class decorator: the lab's description of the family with the same ``key``."""
    tools = cls()
    if not tools.key:
        raise ValueError(f"{cls.__name__} must set key (the family's registry key) to be registered")
    _TOOLS[tools.key] = tools
    return cls


def unregister_tools(key: str) -> None:
    _TOOLS.pop(key, None)


def registered_tools() -> tuple[FamilyTools, ...]:
    return tuple(_TOOLS.values())


def tools_for(key: str) -> FamilyTools:
    """The family's tool description; a family registered without one gets the defaults (no tiny pipeline)."""
    tools = _TOOLS.get(key)
    if tools is None:
        tools = FamilyTools()
        tools.key = key
    return tools


class FamilyTools:
    """The lab's description of one family. Everything here has a default; `build_tiny` is what makes a family
    part of the tests' parametrization and the CPU benchmark."""

    #: The family's registry key (the adapter's ``key``).
    key: str = ""
    #: Frames per second of the published models' videos (the CLI writes videos at this rate).
    fps: int = 16
    #: Call arguments of the built-in tiny pipeline (`build_tiny`): small enough for CPU tests.
    tiny_call: dict[str, Any] = {}
    #: A TeaCache threshold (identity coefficients) that skips some calls on the tiny pair's random weights,
    #: for the CPU benchmark matrix.
    tiny_teacache_threshold: float = 1.0
    #: The published pair at full size, for the GPU benchmark: ``{"large": config kwargs, "small": ...,
    #: "call": pipeline call arguments, "text": (tokens, width) of the prompt embeddings}``.
    published_sizes: dict[str, Any] = {}
    #: Denoising steps the GPU benchmark runs per configuration on this family.
    bench_steps: int = 10

    def build_tiny(self, seed: int = 0) -> tuple[Any, torch.nn.Module]:
        """``(pipe, small)``: a real pipeline of this family with a tiny random "large" transformer, and a
        tinier small one, built in code in eval mode (no download). Used by the tests and the CPU benchmarks."""
        raise NotImplementedError(f"the family {self.key!r} has no built-in tiny pipeline")

    def bare_pipeline(self, transformer: torch.nn.Module, device: Any) -> Any:
        """A pipeline around ``transformer`` with the family's published scheduler and no text encoder (the GPU
        benchmark passes prompt embeddings and keeps latents)."""
        raise NotImplementedError(f"the family {self.key!r} has no bare pipeline for the GPU benchmark")

    def latent_shape(self, model: torch.nn.Module, call: dict[str, Any]) -> tuple[int, ...]:
        """The latents' shape for one video of ``call``'s height, width and frames."""
        raise NotImplementedError

    #: What the tiny pair's height and width must be a multiple of (`size_multiple` of its configs; a test keeps
    #: the two in agreement), known without building it.
    tiny_size_multiple: int | None = None

    def size_multiple(self, vae_config: dict[str, Any], transformer_config: dict[str, Any]) -> int | None:
        """What height and width must be a multiple of for this family's pipeline and these models, read from
        their configs before anything loads (None: not known, the pipeline checks at call time)."""
        return None


def has_tiny(tools: FamilyTools) -> bool:
    return type(tools).build_tiny is not FamilyTools.build_tiny


@register_tools
class WanTools(FamilyTools):
    key = "wan"
    fps = 16
    #: 9 frames -> 3 latent frames, 64 x 64 pixels.
    tiny_call = {"height": 64, "width": 64, "num_frames": 9}
    tiny_size_multiple = 16
    tiny_teacache_threshold = 1.5
    published_sizes = {  # Wan2.1 T2V 14B and 1.3B (docs/method.md, "Published sizes"), 480p
        "large": dict(
            num_layers=40,
            num_attention_heads=40,
            attention_head_dim=128,
            ffn_dim=13824,
            text_dim=4096,
            in_channels=16,
            out_channels=16,
            patch_size=(1, 2, 2),
        ),
        "small": dict(
            num_layers=30,
            num_attention_heads=12,
            attention_head_dim=128,
            ffn_dim=8960,
            text_dim=4096,
            in_channels=16,
            out_channels=16,
            patch_size=(1, 2, 2),
        ),
        "call": dict(height=480, width=832, num_frames=81, guidance_scale=5.0),
        "text": (512, 4096),
    }
    bench_steps = 6

    def size_multiple(self, vae_config: dict[str, Any], transformer_config: dict[str, Any]) -> int | None:
        # WanPipeline.check_inputs wants multiples of 16; the latent must split into whole patches.
        spatial = vae_config.get("scale_factor_spatial", 8) * tuple(transformer_config.get("patch_size", (1, 2, 2)))[1]
        return math.lcm(16, spatial)

    def build_tiny(self, seed: int = 0) -> tuple[Any, torch.nn.Module]:
        """WanPipeline (UniPC flow-matching, flow shift 3.0 as published) with a 4-layer large, 2-layer small."""
        from diffusers import AutoencoderKLWan, WanPipeline
        from transformers import UMT5Config, UMT5EncoderModel

        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=128,
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
            )
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
        large = tiny_wan_transformer(num_layers=4, num_heads=4, seed=seed + 2)
        small = tiny_wan_transformer(num_layers=2, num_heads=2, seed=seed + 3)
        eval_all(text_encoder, vae, large, small)
        pipe = WanPipeline(
            tokenizer=tiny_tokenizer(),
            text_encoder=text_encoder,
            vae=vae,
            transformer=large,
            scheduler=wan.published_scheduler(),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe, small

    def bare_pipeline(self, transformer: torch.nn.Module, device: Any) -> Any:
        from diffusers import WanPipeline

        return WanPipeline(
            tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=wan.published_scheduler()
        )

    def latent_shape(self, model: torch.nn.Module, call: dict[str, Any]) -> tuple[int, ...]:
        # Wan's VAE: 4x in time (plus the first frame), 8x in space; latents are [B, C, F, H, W].
        frames = (call["num_frames"] - 1) // 4 + 1
        return (1, model.config.in_channels, frames, call["height"] // 8, call["width"] // 8)


@register_tools
class CogVideoXTools(FamilyTools):
    key = "cogvideox"
    fps = 8
    #: 9 frames -> 3 latent frames, 64 x 64 pixels.
    tiny_call = {"height": 64, "width": 64, "num_frames": 9}
    tiny_size_multiple = 16
    tiny_teacache_threshold = 1.2
    published_sizes = {  # CogVideoX-5b and -2b (docs/method.md, "Published sizes"), 720 x 480, 49 frames
        "large": dict(
            num_layers=42,
            num_attention_heads=48,
            attention_head_dim=64,
            use_rotary_positional_embeddings=True,
            text_embed_dim=4096,
            sample_frames=49,
            sample_height=60,
            sample_width=90,
            patch_size=2,
        ),
        "small": dict(
            num_layers=30,
            num_attention_heads=30,
            attention_head_dim=64,
            use_rotary_positional_embeddings=False,
            text_embed_dim=4096,
            sample_frames=49,
            sample_height=60,
            sample_width=90,
            patch_size=2,
        ),
        "call": dict(height=480, width=720, num_frames=49, guidance_scale=6.0),
        "text": (226, 4096),
    }
    bench_steps = 10

    def size_multiple(self, vae_config: dict[str, Any], transformer_config: dict[str, Any]) -> int | None:
        # CogVideoXPipeline.check_inputs wants multiples of 8; the latent must split into whole patches.
        spatial = 2 ** (len(vae_config.get("block_out_channels", (128, 256, 256, 512))) - 1)
        return math.lcm(8, spatial * transformer_config.get("patch_size", 2))

    def build_tiny(self, seed: int = 0) -> tuple[Any, torch.nn.Module]:
        """CogVideoXPipeline shaped like 5b (rotary, VAE scale 0.7, SNR shift 1.0) with a 2b-like small model
        (sincos). Both have at least two blocks (First Block Cache needs a first block and a tail)."""
        from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline
        from transformers import T5Config, T5EncoderModel

        torch.manual_seed(seed)
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=128,
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
            )
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 8, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
            scaling_factor=0.7,
        )
        large = tiny_cogvideox_transformer(num_layers=3, num_heads=4, rotary=True, seed=seed + 2)
        small = tiny_cogvideox_transformer(num_layers=2, num_heads=2, rotary=False, seed=seed + 3)
        eval_all(text_encoder, vae, large, small)
        pipe = CogVideoXPipeline(
            tokenizer=tiny_tokenizer(),
            text_encoder=text_encoder,
            vae=vae,
            transformer=large,
            scheduler=cogvideox.published_scheduler(1.0),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe, small

    def bare_pipeline(self, transformer: torch.nn.Module, device: Any) -> Any:
        from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline

        # A tiny VAE only for its config (5b's scaling factor 0.7, 8x spatial); decoding is skipped.
        vae = AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 8, 8),
            latent_channels=transformer.config.in_channels,
            layers_per_block=1,
            norm_num_groups=2,
            scaling_factor=0.7,
        ).to(device)
        return CogVideoXPipeline(
            tokenizer=None,
            text_encoder=None,
            vae=vae,
            transformer=transformer,
            scheduler=cogvideox.published_scheduler(1.0),
        )

    def latent_shape(self, model: torch.nn.Module, call: dict[str, Any]) -> tuple[int, ...]:
        # CogVideoX's VAE: 4x in time (plus the first frame), 8x in space; latents are [B, F, C, H, W].
        frames = (call["num_frames"] - 1) // 4 + 1
        return (1, frames, model.config.in_channels, call["height"] // 8, call["width"] // 8)


def tiny_wan_transformer(num_layers: int, num_heads: int, seed: int) -> Any:
    """A tiny `WanTransformer3DModel` with random weights (latent channels 16, text width 32)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return (
        WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=num_heads,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=32,
            ffn_dim=2 * 12 * num_heads,
            num_layers=num_layers,
            rope_max_seq_len=32,
        )
        .eval()
        .requires_grad_(False)
    )


def tiny_cogvideox_transformer(num_layers: int, num_heads: int, rotary: bool, seed: int) -> Any:
    """A tiny `CogVideoXTransformer3DModel` with random weights (latent channels 4, text width 32)."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return (
        CogVideoXTransformer3DModel(
            num_attention_heads=num_heads,
            attention_head_dim=16,
            in_channels=4,
            out_channels=4,
            time_embed_dim=16,
            text_embed_dim=32,
            num_layers=num_layers,
            sample_width=8,
            sample_height=8,
            sample_frames=9,
            patch_size=2,
            max_text_seq_length=226,
            use_rotary_positional_embeddings=rotary,
        )
        .eval()
        .requires_grad_(False)
    )


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


def eval_all(*modules: torch.nn.Module) -> None:
    """Eval mode, no gradients: two identical calls then give identical outputs."""
    for m in modules:
        m.eval().requires_grad_(False)
