"""Wan2.1 T2V (`WanPipeline`): 14B sketches, 1.3B renders.

Both sizes share the VAE, the umT5 text encoder and the flow-matching schedule (flow shift 3.0 in the
published 480p pipelines), so latents, timesteps and text embeddings hand over unchanged. CFG is two
transformer calls per step ("cond" then "uncond" cache contexts); the core switches between steps only.

Every WanPipeline set-up diffusers runs is served: Wan2.2 A14B's two experts with a boundary (the low-noise one may
be left out, None, when the small model renders the rest), ``transformer_2`` without a boundary (every step on
``transformer``, as diffusers runs it), TI2V-5B's per-token timesteps (``expand_timesteps``: its own latent space,
so the small model must share its latent layout, which `check_pair` reads from the two configs).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import FamilyAdapter, register_family

#: TeaCache rescale polynomials published for Wan2.1 T2V (ali-vilab/TeaCache, TeaCache4Wan2.1), numpy
#: poly1d order. "-ret" sets go with ``ret_steps``: decide on the time projection e0 and always compute
#: the first 5 steps; the others decide on the time embedding e.
WAN_TEACACHE_COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "wan2.1-t2v-1.3b": (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01),
    "wan2.1-t2v-14b": (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
    "wan2.1-t2v-1.3b-ret": (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
    "wan2.1-t2v-14b-ret": (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
}

#: (num_layers, num_attention_heads, attention_head_dim) of the published Wan2.1 T2V transformers.
_WAN_SIZES = {(30, 12, 128): "wan2.1-t2v-1.3b", (40, 40, 128): "wan2.1-t2v-14b"}


@register_family
class WanAdapter(FamilyAdapter):
    name = "Wan"
    key = "wan"
    cfg_branches = ("cond", "uncond")
    step_ends_with_progress_update = True
    pipeline_class_names = ("WanPipeline",)
    transformer_class_name = "WanTransformer3DModel"
    pair_fields = ("in_channels", "out_channels", "patch_size", "text_dim")
    para_attn_refusal = (
        "para-attn's Wan context-parallel adapter fails on diffusers >= 0.35 (RoPE returns a tuple); "
        "use diffusers' own: pipe.transformer.enable_parallelism(config=ContextParallelConfig("
        "ulysses_degree=N))"
    )

    def _boundary(self, pipe: Any) -> float | None:
        ratio = pipe.config.get("boundary_ratio")
        return None if ratio is None else ratio * pipe.scheduler.config.num_train_timesteps

    def latest_switch_step(self, pipe: Any, timesteps: list[float]) -> tuple[int, str] | None:
        boundary = self._boundary(pipe)
        if boundary is None or getattr(pipe, "transformer_2", None) is not None:
            return None
        # Without the low-noise expert, the first step below the boundary must be the small model's.
        first_low = next((j for j, t in enumerate(timesteps) if t < boundary), len(timesteps))
        return first_low, (
            f"Wan2.2 boundary_ratio={pipe.config.boundary_ratio}: the low-noise expert (transformer_2) is not loaded"
        )

    def expert_slots(self, pipe: Any) -> tuple[str, ...]:
        return ("transformer_2",) if self._boundary(pipe) is not None else ()

    def check_scheduler(self, scheduler: Any) -> None:
        flow = scheduler.config.get("prediction_type") == "flow_prediction" or "FlowMatch" in type(scheduler).__name__
        if not flow or not hasattr(scheduler, "sigmas"):
            raise ValueError(
                f"{type(scheduler).__name__} is not a flow-matching scheduler with `sigmas`; Wan's denoised "
                "estimate x0 = x - sigma * v needs one (FlowMatchEulerDiscreteScheduler, or UniPC/DPM++ with "
                "prediction_type='flow_prediction')"
            )

    def denoised(
        self, scheduler: Any, step_index: int, timestep: float, sample: torch.Tensor, model_output: torch.Tensor
    ) -> torch.Tensor:
        # Flow matching: x_t = (1 - sigma) x0 + sigma * eps and v = eps - x0, so x0 = x_t - sigma * v.
        # The schedulers keep `sigmas` on the host, so this reads no device value.
        sigma = float(scheduler.sigmas[step_index])
        return sample.float() - sigma * model_output.float()

    def noise_level(self, scheduler: Any, step_index: int) -> tuple[str, float] | None:
        return "sigma", float(scheduler.sigmas[step_index])

    teacache_coefficients = WAN_TEACACHE_COEFFICIENTS

    def blocks(self, model: Any) -> Any:
        return model.blocks

    def attention_modules(self, model: Any) -> list[tuple[torch.nn.Module, str]]:
        return [(m, kind) for b in model.blocks for m, kind in ((b.attn1, "self"), (b.attn2, "cross"))]

    def teacache_input(self, model: Any, ret_steps: bool) -> tuple[Any, ...]:
        # The blocks get the time projection e0 (`timestep_proj`) as their third argument; the time
        # embedding e before projection only leaves the model's `condition_embedder` (first output).
        return ("block_arg", "temb") if ret_steps else ("output_of", model.condition_embedder, 0)

    def teacache_modulated_input(
        self, model: Any, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, ret_steps: bool
    ) -> torch.Tensor:
        temb, timestep_proj, _, _ = model.condition_embedder(timestep, encoder_hidden_states, None)
        return timestep_proj.unflatten(1, (6, -1)) if ret_steps else temb

    def teacache_preset(self, model: Any, ret_steps: bool) -> str | None:
        c = model.config
        name = _WAN_SIZES.get((c.num_layers, c.num_attention_heads, c.attention_head_dim))
        return None if name is None else name + ("-ret" if ret_steps else "")


def published_scheduler() -> Any:
    """The published 480p Wan2.1 T2V scheduler: UniPC on flow matching, flow shift 3.0."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
