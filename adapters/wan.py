"""Wan2.1 T2V (`WanPipeline`): 14B sketches, 1.3B renders.

Both sizes share the VAE, the umT5 text encoder and the flow-matching schedule (flow shift 3.0 in the
published 480p pipelines), so latents, timesteps and text embeddings hand over unchanged. CFG is two
transformer calls per step ("cond" then "uncond" cache contexts); the core switches between steps only.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import FamilyAdapter


class WanAdapter(FamilyAdapter):
    name = "Wan"
    pipeline_class_names = ("WanPipeline",)
    transformer_class_name = "WanTransformer3DModel"
    pair_fields = ("in_channels", "out_channels", "patch_size", "text_dim")

    def check_pipeline(self, pipe: Any) -> None:
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("boundary_ratio") is not None:
            raise ValueError(
                "this WanPipeline already has two experts (transformer_2 / boundary_ratio, Wan2.2); "
                "sr_plugin.apply expects a single-transformer Wan2.1 pipeline"
            )

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
