"""The trained model families shipped in the package: their architectures, where their folders are, and how to
load them the way hub checkpoints are loaded (``from_pretrained``).

Each family has a ``large`` and a ``small`` folder under ``sr_plugin/trained/<family>/``, laid out like the
published hub repositories (a whole pipeline folder each: ``model_index.json``, ``scheduler``, ``text_encoder``,
``tokenizer``, ``transformer``, ``vae``), trained on the task of `sr_plugin.lab.task` by ``train/train_family.py``:

- Wan: one VAE (`AutoencoderKLWan`), one frozen UMT5 encoder and one flow-matching schedule (flow
  shift 3.0) for both transformers, as Wan2.1 14B and 1.3B share them.
- CogVideoX: one VAE (`AutoencoderKLCogVideoX`) and one frozen T5 encoder, but the pair differs the way
  5b and 2b do: the large one is rotary and trained on latents scaled by 0.7 with ``snr_shift_scale`` 1.0, the
  small one has sincos position embeddings and was trained on latents scaled by 1.15258426 with
  ``snr_shift_scale`` 3.0 (its folder's VAE config and scheduler say so), so the hand-off maps latent spaces.

The text encoders are frozen and hand-set (`sr_plugin.lab.task_encoder`: each colour token carries its object's shape
and direction, as a pretrained encoder would) behind a word-level tokenizer of the task's vocabulary.
"""

from __future__ import annotations

import pathlib
from typing import Any

import torch

from . import task
from .shipped import CALIBRATED_FILE, FAMILY_NAMES, ROLES, ROOT, SMALL_MODELS, calibrated, check_family, folder  # noqa: F401

#: Text tokens per prompt: a task prompt has 11 words plus the end token. The CogVideoX small model
#: (sincos position embeddings) was built for exactly this many.
MAX_SEQUENCE_LENGTH = 16
#: Pipeline call arguments the families were trained for (pass them with every call).
CALL: dict[str, Any] = {
    "height": task.HEIGHT,
    "width": task.WIDTH,
    "num_frames": task.NUM_FRAMES,
    "max_sequence_length": MAX_SEQUENCE_LENGTH,
}
#: Guidance scale per family (the pipelines' defaults: Wan 5.0, CogVideoX 6.0).
GUIDANCE: dict[str, float] = {"wan": 5.0, "cogvideox": 6.0}
FPS: dict[str, int] = {"wan": 8, "cogvideox": 8}

#: CogVideoX-style latent scales and schedule shifts (docs/adapters.md, "CogVideoX"): the 5b-like large model's and
#: the 2b-like small model's.
COGVIDEOX_SPACE: dict[str, tuple[float, float]] = {"large": (0.7, 1.0), "small": (1.15258426, 3.0)}


def call_defaults(family: str) -> dict[str, Any]:
    """What each folder of the family says it was made for (`sr_plugin.lab.call_defaults`: its
    ``call_defaults.json``): the call geometry, the guidance scale and the frames per second."""
    return {**CALL, "guidance_scale": GUIDANCE[check_family(family)], "fps": FPS[family]}


LATENT_CHANNELS = 8
TEXT_DIM = 32
#: Transformer sizes per family and role: (layers, heads, feed-forward width or None for 4 x the width); head dim
#: 16. The small models are the large ones shortened (and, for Wan, with half the feed-forward width), so that a
#: pipeline step of the large model costs about 5x (Wan) and 2.6x (CogVideoX) one of the small on a 2-core CPU,
#: like the published pairs (docs/trained-families.md). The weak small models of the first release were 2 x 2. The
#: shipped folders' configs are what loads; these build a model to train.
SIZES: dict[str, dict[str, tuple[int, int, int | None]]] = {
    "wan": {"large": (20, 4, None), "small": (4, 4, 128), "small-weak": (2, 2, None)},
    "cogvideox": {"large": (8, 4, None), "small": (3, 4, None), "small-weak": (2, 2, None)},
}
HEAD_DIM = 16


# --------------------------------------------------------------------------------------- architectures
def word_tokenizer() -> Any:
    """A word-level tokenizer of the task's vocabulary (T5's ids: pad 0, end 1, unknown 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in task.VOCABULARY:
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_SEQUENCE_LENGTH,
    )


def text_encoder(family: str) -> torch.nn.Module:
    """The frozen text encoder both roles share: a hand-set UMT5 (Wan) or T5 (CogVideoX) that carries which
    shape and direction belong to which colour (`sr_plugin.lab.task_encoder`)."""
    from . import task_encoder

    return task_encoder.build(family)


def vae(family: str) -> torch.nn.Module:
    """4x spatial and 4x temporal compression to LATENT_CHANNELS channels (9 x 32 x 32 -> 3 x 8 x 8)."""
    if family == "wan":
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan(
            base_dim=8,
            z_dim=LATENT_CHANNELS,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[True, True],
            latents_mean=[0.0] * LATENT_CHANNELS,
            latents_std=[1.0] * LATENT_CHANNELS,
            scale_factor_spatial=4,
            scale_factor_temporal=4,
        )
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(
        block_out_channels=(8, 16, 16),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=4,
        temporal_compression_ratio=4,
        down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3,
        scaling_factor=COGVIDEOX_SPACE["large"][0],
        sample_height=task.HEIGHT,
        sample_width=task.WIDTH,
    )


def scheduler(family: str, role: str = "large") -> Any:
    if family == "wan":  # Wan2.1's published T2V scheduler: UniPC, flow matching, flow shift 3.0
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    from .tiny import cogvideox_scheduler

    return cogvideox_scheduler(COGVIDEOX_SPACE[role][1])


def transformer(
    family: str, role: str, seed: int = 0, layers: int | None = None, heads: int | None = None, ffn: int | None = None
) -> torch.nn.Module:
    """A freshly initialised transformer of the family's role, ``layers`` deep, ``heads`` wide and with a
    feed-forward width ``ffn`` if given (else SIZES')."""
    default_layers, default_heads, default_ffn = SIZES[family][role]
    layers = layers or default_layers
    heads = heads or default_heads
    ffn = ffn or default_ffn or 4 * heads * HEAD_DIM
    if family == "cogvideox" and ffn != 4 * heads * HEAD_DIM:
        raise ValueError("CogVideoXTransformer3DModel takes no feed-forward width: it is 4 x the model width")
    torch.manual_seed(seed)
    if family == "wan":
        from diffusers import WanTransformer3DModel

        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=heads,
            attention_head_dim=HEAD_DIM,
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            text_dim=TEXT_DIM,
            freq_dim=64,
            ffn_dim=ffn,
            num_layers=layers,
            rope_max_seq_len=32,
        )
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(
        num_attention_heads=heads,
        attention_head_dim=HEAD_DIM,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        time_embed_dim=64,
        text_embed_dim=TEXT_DIM,
        num_layers=layers,
        sample_width=task.WIDTH // 4,
        sample_height=task.HEIGHT // 4,
        sample_frames=task.NUM_FRAMES,
        patch_size=2,
        max_text_seq_length=MAX_SEQUENCE_LENGTH,
        use_rotary_positional_embeddings=(role == "large"),
    )


def build_pipeline(
    family: str, role: str, transformer_model: torch.nn.Module, vae_model: torch.nn.Module, encoder: torch.nn.Module
) -> Any:
    """A pipeline of the family around the given components (the folder layout `save_pretrained` writes)."""
    check_family(family)
    if family == "wan":
        from diffusers import WanPipeline

        pipe = WanPipeline(
            tokenizer=word_tokenizer(),
            text_encoder=encoder,
            vae=vae_model,
            transformer=transformer_model,
            scheduler=scheduler(family, role),
        )
    else:
        from diffusers import CogVideoXPipeline

        if role == "small":  # the small model's own latent scale, as CogVideoX-2b's VAE config has it
            import copy

            vae_model = copy.deepcopy(vae_model)
            vae_model.register_to_config(scaling_factor=COGVIDEOX_SPACE["small"][0])
        pipe = CogVideoXPipeline(
            tokenizer=word_tokenizer(),
            text_encoder=encoder,
            vae=vae_model,
            transformer=transformer_model,
            scheduler=scheduler(family, role),
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------- loading
class TrainedFamilyError(RuntimeError):
    """A shipped family folder is missing or unreadable."""


def load(
    family: str, dtype: torch.dtype = torch.float32, small: str = "competent"
) -> tuple[Any, torch.nn.Module, dict[str, Any]]:
    """``(pipe, small_transformer, apply_kwargs)`` for a trained family, loaded with ``from_pretrained``.

    ``small``: "competent" (the default partner, distilled from the large model) or "weak" (the first release's
    small model, which gets no prompt right alone: what a partner's competence buys). ``apply_kwargs`` holds what
    `sr_plugin.apply` needs beyond the two models (``sr_plugin.apply(pipe, small, **apply_kwargs)``, and
    ``calibrate(..., apply_kwargs=apply_kwargs)``): for CogVideoX, the small model's latent scale and schedule, read
    from its own folder (as one would from CogVideoX-2b's).
    """
    check_family(family)
    if small not in SMALL_MODELS:
        raise ValueError(f"small={small!r}: the trained families ship the small models {', '.join(SMALL_MODELS)}")
    return load_folders(folder(family, "large"), folder(family, SMALL_MODELS[small]), dtype)


def load_folders(
    large: str | pathlib.Path, small: str | pathlib.Path, dtype: torch.dtype = torch.float32
) -> tuple[Any, torch.nn.Module, dict[str, Any]]:
    """Load a large pipeline folder and a small one's transformer (and, for CogVideoX, its VAE scale and
    scheduler); every failure becomes one `TrainedFamilyError` naming the folder."""
    from diffusers import DiffusionPipeline

    from ..adapters import adapter_for

    large, small = pathlib.Path(large), pathlib.Path(small)
    for path in (large, small):
        if not (path / "model_index.json").is_file():
            raise TrainedFamilyError(
                f"no model folder at {str(path)!r} (model_index.json is missing): the "
                "trained weights are not installed; reinstall sr-plugin or rerun training"
            )
    try:
        pipe = DiffusionPipeline.from_pretrained(str(large), dtype=dtype, local_files_only=True)
    except Exception as err:
        raise TrainedFamilyError(f"cannot load the model folder {str(large)!r}: {first_line(err)}") from err
    adapter = adapter_for(pipe)
    try:
        small_model = adapter.transformer_class().from_pretrained(
            str(small), subfolder="transformer", dtype=dtype, local_files_only=True
        )
        extra: dict[str, Any] = {}
        if adapter.name == "CogVideoX":
            from diffusers import AutoencoderKLCogVideoX

            extra["small_vae_scaling_factor"] = float(
                AutoencoderKLCogVideoX.load_config(str(small), subfolder="vae")["scaling_factor"]
            )
            extra["small_scheduler"] = type(pipe.scheduler).from_pretrained(str(small), subfolder="scheduler")
    except Exception as err:
        raise TrainedFamilyError(f"cannot load the model folder {str(small)!r}: {first_line(err)}") from err
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe, small_model.eval(), extra


def first_line(err: BaseException) -> str:
    """The first line of an error's message (the user sees one sentence, not a stack)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
