"""CogVideoX (`CogVideoXPipeline`): 5b sketches, 2b renders.

Everything here is specific to CogVideoX (docs/method.md, "The latent-space hand-off"):

- Latents are [B, F, C, H, W]; CFG is one batched call (uncond first), so each step is one call.
- 2b and 5b share the VAE weights and the T5 encoder, but were trained on differently scaled latents
  (VAE ``scaling_factor`` 1.15258426 vs 0.7) and noise schedules (``snr_shift_scale`` 3.0 vs 1.0; the
  scheduler divides the SNR by it). The small model must see the same noisy video the large one sees,
  expressed in its own space, and its v-prediction must be mapped back.
- 5b uses 3D rotary embeddings that the pipeline computes once from ``pipe.transformer.config``; 2b has
  sincos position embeddings and must not get them, and a rotary small model needs its own.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..compat import cogvideox_rotary_embeddings
from .base import FamilyAdapter, Handoff, register_family

#: CogVideoX-2b's VAE ``scaling_factor`` (its vae/config.json): the scale its transformer was trained on.
PUBLISHED_2B_VAE_SCALING_FACTOR = 1.15258426
#: CogVideoX-2b's scheduler ``snr_shift_scale`` (its scheduler_config.json); 5b uses 1.0.
PUBLISHED_2B_SNR_SHIFT_SCALE = 3.0


#: TeaCache rescale polynomials published for CogVideoX 2b and 5b (ali-vilab/TeaCache;
#: docs/method.md, "TeaCache"), numpy poly1d order; they decide on the time embedding.
COGVIDEOX_TEACACHE_COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "cogvideox-2b": (-3.10658903e01, 2.54732368e01, -5.92380459e00, 1.75769064e00, -3.61568434e-03),
    "cogvideox-5b": (-1.53880483e03, 8.43202495e02, -1.34363087e02, 7.97131516e00, -5.23162339e-02),
}

#: (num_layers, num_attention_heads, use_rotary_positional_embeddings) of the published CogVideoX 1.0 models.
_COGVIDEOX_SIZES = {(30, 30, False): "cogvideox-2b", (42, 48, True): "cogvideox-5b"}


def interpolate_table(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A per-integer-timestep table read at fractional timesteps: piecewise linear, extrapolated linearly
    beyond the ends. Exact at integers. This is how we define ``abar(t)`` between training timesteps."""
    i0 = t.floor().clamp(0, table.shape[0] - 2)
    w = t - i0
    i0 = i0.long()
    return table[i0] * (1 - w) + table[i0 + 1] * w


def invert_table(table: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The fractional timestep where the strictly decreasing ``table`` (interpolated as above) equals ``value``."""
    idx = torch.searchsorted(-table, -value.contiguous())
    i0 = (idx - 1).clamp(0, table.shape[0] - 2)
    hi, lo = table[i0], table[i0 + 1]
    return i0.to(table.dtype) + (hi - value) / (hi - lo)


#: The prediction types the pipelines' schedulers name (``scheduler.config.prediction_type``).
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


def prediction_type(scheduler: Any) -> str:
    return scheduler.config.get("prediction_type", "epsilon")


def _as_x0_eps(kind: str, a: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A model output of ``kind`` at abar ``a`` on the sample ``k x`` as (x0, eps), each ``p x + q output``:
    returns (p_x0, q_x0, p_eps, q_eps)."""
    sa, s1a = a.sqrt(), (1.0 - a).sqrt()
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    if kind == "v_prediction":  # x0 = sqrt(a) x - sqrt(1-a) v, eps = sqrt(1-a) x + sqrt(a) v
        return sa * k, -s1a, s1a * k, sa
    if kind == "epsilon":  # x0 = (x - sqrt(1-a) eps) / sqrt(a)
        inv = 1.0 / sa.clamp_min(1e-12)
        return k * inv, -s1a * inv, zero, one
    inv = 1.0 / s1a.clamp_min(1e-12)  # "sample": eps = (x - sqrt(a) x0) / sqrt(1-a)
    return zero, one, k * inv, -sa * inv


def _from_x0_eps(
    kind: str, a: torch.Tensor, x0: tuple[torch.Tensor, torch.Tensor], eps: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model output of ``kind`` at abar ``a`` from x0 and eps (each a pair of coefficients on x and output)."""
    if kind == "v_prediction":  # v = sqrt(a) eps - sqrt(1-a) x0
        sa, s1a = a.sqrt(), (1.0 - a).sqrt()
        return sa * eps[0] - s1a * x0[0], sa * eps[1] - s1a * x0[1]
    return eps if kind == "epsilon" else x0


class LatentSpaceMap:
    """Maps a noisy sample of the large model's space into the small model's space and its prediction back, exactly.

    With ``c = scale_small / scale_large``, the small model sees ``k * x_t`` at the timestep ``t'`` where
    ``SNR_small(t') = SNR_large(t) / c**2``, i.e. ``abar' = abar / (abar + c**2 (1 - abar))`` (written
    in abar so that zero terminal SNR, abar = 0, needs no special case), ``k = sqrt(1-abar')/sqrt(1-abar)``.
    Its prediction (of the small scheduler's prediction type) maps back through x0' = c x0 and eps' = eps into the
    large scheduler's type: ``out = A x_t + B out'`` (coefficients below; epsilon, v_prediction or sample).
    """

    def __init__(
        self,
        abar_large: torch.Tensor,
        abar_small: torch.Tensor,
        scale_ratio: float,
        large_type: str = "v_prediction",
        small_type: str = "v_prediction",
    ) -> None:
        self.abar_large = abar_large.double()
        self.abar_small = abar_small.double()
        self.c = float(scale_ratio)
        self.large_type, self.small_type = large_type, small_type
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def is_identity(self) -> bool:
        return self.c == 1.0 and self.large_type == self.small_type and torch.equal(self.abar_large, self.abar_small)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (self.abar_large.to(device), self.abar_small.to(device))
        return self._on[device]

    def coefficients(self, timestep: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample ``t_small``, ``k``, ``A`` (coef_x), ``B`` (coef_v) (float64, on the timestep's device, no host
        sync)."""
        abar_l, abar_s = self._tables(timestep.device)
        t = timestep.double().reshape(-1)
        c2 = self.c * self.c
        a = interpolate_table(abar_l, t).clamp(0.0, 1.0)
        a_s = a / (a + c2 * (1.0 - a))
        t_small = invert_table(abar_s, a_s)
        k = torch.sqrt((1.0 - a_s) / (1.0 - a).clamp_min(1e-12))
        px0, qx0, peps, qeps = _as_x0_eps(self.small_type, a_s, k)
        coef_x, coef_v = _from_x0_eps(self.large_type, a, (px0 / self.c, qx0 / self.c), (peps, qeps))
        return {"t_small": t_small, "k": k, "coef_x": coef_x, "coef_v": coef_v}


def _bcast(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return coef.to(torch.float32).reshape(-1, *([1] * (like.dim() - 1)))


class CogVideoXHandoff(Handoff):
    def __init__(self, pipe: Any, small: Any, small_scale: float | None, small_scheduler: Any) -> None:
        self.small = small
        self.vae_scale_factor_spatial = pipe.vae_scale_factor_spatial
        self._small_scale = small_scale
        self._small_scheduler = small_scheduler
        self._published_2b_defaults = (
            not small.config.use_rotary_positional_embeddings
            and pipe.transformer.config.use_rotary_positional_embeddings
        )
        self.space: LatentSpaceMap | None = None
        self._space_key: tuple[Any, ...] | None = None
        self._rotary: tuple[Any, Any] | None = None

    def begin_call(self, pipe: Any) -> None:
        self._rotary = None
        scheduler = pipe.scheduler
        large_scale = float(pipe.vae.config.scaling_factor)
        # Rebuilt only when the pipeline's scheduler or VAE scale changed (building a scheduler costs ms).
        key = (id(scheduler), id(scheduler.config), large_scale)
        if key == self._space_key:
            return
        small_scale = self._small_scale
        if small_scale is None:
            small_scale = PUBLISHED_2B_VAE_SCALING_FACTOR if self._published_2b_defaults else large_scale
        if self._small_scheduler is not None:
            abar_small = self._small_scheduler.alphas_cumprod
        elif self._published_2b_defaults:
            abar_small = (
                type(scheduler)
                .from_config(scheduler.config, snr_shift_scale=PUBLISHED_2B_SNR_SHIFT_SCALE)
                .alphas_cumprod
            )
        else:
            abar_small = scheduler.alphas_cumprod
        small_type = prediction_type(self._small_scheduler if self._small_scheduler is not None else scheduler)
        self.space = LatentSpaceMap(
            scheduler.alphas_cumprod, abar_small, small_scale / large_scale, prediction_type(scheduler), small_type
        )
        self._space_key = key

    def _small_rotary(self, hidden_states: torch.Tensor) -> Any:
        """The positional input the small model's own config calls for: None (sincos) or its own 3D RoPE."""
        if not self.small.config.use_rotary_positional_embeddings:
            return None
        key = (tuple(hidden_states.shape), hidden_states.device)
        if self._rotary is None or self._rotary[0] != key:
            # The pipeline's own computation, read from the small model's config instead of pipe.transformer.
            _, frames, _, h, w = hidden_states.shape
            emb = cogvideox_rotary_embeddings(
                self.small,
                self.vae_scale_factor_spatial,
                h * self.vae_scale_factor_spatial,
                w * self.vae_scale_factor_spatial,
                frames,
                hidden_states.device,
            )
            self._rotary = (key, emb)
        return self._rotary[1]

    def map_inputs(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        kwargs = dict(kwargs)
        x = kwargs["hidden_states"]
        if "image_rotary_emb" in kwargs or self.small.config.use_rotary_positional_embeddings:
            kwargs["image_rotary_emb"] = self._small_rotary(x)
        if self.space is None or self.space.is_identity:
            return kwargs, None
        coef = self.space.coefficients(kwargs["timestep"])
        kwargs["hidden_states"] = x.float() * _bcast(coef["k"], x)
        kwargs["timestep"] = coef["t_small"].to(torch.float32)
        return kwargs, (x, coef)

    def map_output(self, output: torch.Tensor, state: Any) -> torch.Tensor:
        if state is None:
            return output
        x, coef = state
        return _bcast(coef["coef_x"], x) * x.float() + _bcast(coef["coef_v"], x) * output.float()


@register_family
class CogVideoXAdapter(FamilyAdapter):
    key = "cogvideox"
    cfg_branches = ("cond_uncond",)
    step_ends_with_progress_update = True
    option_names = ("small_vae_scaling_factor", "small_scheduler")
    name = "CogVideoX"
    pipeline_class_names = ("CogVideoXPipeline",)
    transformer_class_name = "CogVideoXTransformer3DModel"
    pair_fields = ("in_channels", "out_channels", "patch_size", "patch_size_t", "text_embed_dim")

    def guided(self, outputs: list[torch.Tensor], guidance_scale: float) -> torch.Tensor:
        # CFG as one batched call, the unconditional half first; the pipeline guides in float32.
        (output,) = outputs
        if guidance_scale <= 1.0:
            return output.float()
        uncond, cond = output.float().chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def check_pipeline(self, pipe: Any) -> None:
        if getattr(pipe, "vae", None) is None:
            raise ValueError("this CogVideoXPipeline has no vae: its scaling_factor defines the latent space")

    def check_scheduler(self, scheduler: Any) -> None:
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(
                f"{type(scheduler).__name__} has no `alphas_cumprod`; CogVideoX's denoised estimate (x0 from the "
                "sample, the noise level and the model's prediction) needs a DDPM-style schedule "
                "(CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, ...)"
            )
        if prediction_type(scheduler) not in PREDICTION_TYPES:
            raise ValueError(
                f"{type(scheduler).__name__} has prediction_type={prediction_type(scheduler)!r}; "
                f"sr_plugin reads x0 for {', '.join(PREDICTION_TYPES)}"
            )

    def denoised(
        self, scheduler: Any, step_index: int, timestep: float, sample: torch.Tensor, model_output: torch.Tensor
    ) -> torch.Tensor:
        # x = sqrt(abar) x0 + sqrt(1 - abar) eps, and the model predicts v, eps or x0 (the scheduler's prediction_type).
        abar = float(scheduler.alphas_cumprod[int(round(timestep))])
        x, out = sample.float(), model_output.float()
        kind = prediction_type(scheduler)
        if kind == "v_prediction":
            return math.sqrt(abar) * x - math.sqrt(1.0 - abar) * out
        if kind == "epsilon":
            return (x - math.sqrt(1.0 - abar) * out) / math.sqrt(max(abar, 1e-12))
        return out

    def noise_level(self, scheduler: Any, step_index: int) -> tuple[str, float] | None:
        return "abar", float(scheduler.alphas_cumprod[int(scheduler.timesteps[step_index])])

    def make_handoff(  # type: ignore[override]  # its options by name (option_names), as apply passes them
        self,
        pipe: Any,
        small: Any,
        small_vae_scaling_factor: float | None = None,
        small_scheduler: Any = None,
    ) -> Handoff:
        if small_vae_scaling_factor is not None and not (
            isinstance(small_vae_scaling_factor, (int, float))
            and not isinstance(small_vae_scaling_factor, bool)
            and math.isfinite(small_vae_scaling_factor)
            and small_vae_scaling_factor > 0
        ):
            raise ValueError(f"small_vae_scaling_factor must be a positive number, got {small_vae_scaling_factor!r}")
        if small_scheduler is not None:
            abar = getattr(small_scheduler, "alphas_cumprod", None)
            if not isinstance(abar, torch.Tensor) or abar.dim() != 1 or not bool((abar[1:] < abar[:-1]).all()):
                raise ValueError(
                    "small_scheduler must be a scheduler with a strictly decreasing 1-D `alphas_cumprod` "
                    "(for example CogVideoXDDIMScheduler.from_pretrained(<2b>, subfolder='scheduler'))"
                )
        return CogVideoXHandoff(pipe, small, small_vae_scaling_factor, small_scheduler)

    def check_prompt_embeds(self, small: Any, prompt_embeds: torch.Tensor) -> None:
        # A sincos (2b-style) model's position table covers exactly max_text_seq_length text tokens.
        c = small.config
        if not c.use_rotary_positional_embeddings and prompt_embeds.shape[1] != c.max_text_seq_length:
            raise ValueError(
                f"this call's text embeddings have {prompt_embeds.shape[1]} tokens, but the small model "
                f"(sincos positions) takes exactly max_text_seq_length={c.max_text_seq_length}: call the pipeline "
                f"with max_sequence_length={c.max_text_seq_length}"
            )

    teacache_coefficients = COGVIDEOX_TEACACHE_COEFFICIENTS
    # The blocks update video and text tokens together. diffusers records the same fact for its own blocks in a
    # private registry (hooks._helpers.TransformerBlockRegistry); it is declared here because a family's blocks
    # need not be in it (a test keeps the two in agreement for Wan's and CogVideoX's).
    block_layout = ("hidden_states", "encoder_hidden_states")

    def blocks(self, model: Any) -> Any:
        return model.transformer_blocks

    def attention_modules(self, model: Any) -> list[tuple[torch.nn.Module, str]]:
        # One joint (text + video) self-attention per block; CogVideoX has no separate cross-attention.
        return [(b.attn1, "self") for b in model.transformer_blocks]

    def teacache_input(self, model: Any, ret_steps: bool) -> tuple[Any, ...]:
        if ret_steps:
            raise ValueError("TeaCache's ret_steps mode was published for Wan only; CogVideoX has no such coefficients")
        return ("block_arg", "temb")

    def teacache_modulated_input(
        self, model: Any, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, ret_steps: bool
    ) -> torch.Tensor:
        return model.time_embedding(model.time_proj(timestep).to(encoder_hidden_states.dtype), None)

    def teacache_preset(self, model: Any, ret_steps: bool) -> str | None:
        c = model.config
        return _COGVIDEOX_SIZES.get((c.num_layers, c.num_attention_heads, c.use_rotary_positional_embeddings))


def published_scheduler(snr_shift_scale: float) -> Any:
    """CogVideoX's published DDIM scheduler config; 5b uses snr_shift_scale 1.0, 2b 3.0."""
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=snr_shift_scale,
        timestep_spacing="trailing",
    )
