"""One seeded pipeline call: the runner every tool and test shares."""

from __future__ import annotations

from typing import Any

import torch


def run_seeded(pipe: Any, prompt: str | None, seed: int, *, output_type: str = "latent", **call: Any) -> Any:
    """Call ``pipe`` once with noise from a CPU generator seeded with ``seed`` and return its frames.

    A CPU generator gives the same initial noise on every device (diffusers draws it on the CPU and moves
    it), so a seed names one video wherever it runs. ``call`` holds the other pipeline arguments
    (``num_inference_steps``, sizes, ``guidance_scale``, ...); with ``prompt=None`` they carry ``prompt_embeds``."""
    if prompt is not None:
        call["prompt"] = prompt
    return pipe(output_type=output_type, generator=torch.Generator().manual_seed(seed), **call).frames
