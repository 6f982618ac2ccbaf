"""The per-step observation: relative change of the denoised estimate (docs/method.md, "The adaptive rule")."""

from __future__ import annotations

import torch

#: Guards the division when the previous estimate is all zeros.
EPS = 1e-8


def relative_change(x0: torch.Tensor, prev_x0: torch.Tensor) -> torch.Tensor:
    """``tanh(mean|x0 - prev| / (mean|prev| + eps))`` as a 0-d float32 tensor on x0's device (no host sync)."""
    x0 = x0.float()
    prev_x0 = prev_x0.float()
    return torch.tanh((x0 - prev_x0).abs().mean() / (prev_x0.abs().mean() + EPS))
