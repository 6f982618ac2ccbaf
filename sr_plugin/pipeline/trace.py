"""What happened in a pipeline call, step by step."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepRecord:
    """One denoising step: which model ran it and the switching metric observed after it.

    ``d`` is undefined (None) at step 0 and ``s`` at steps 0 and 1. ``cache`` holds, per model call
    ("cond", "uncond", "cond_uncond"), whether a caching acceleration computed or skipped the blocks;
    ``attention`` the same for Pyramid Attention Broadcast: "computed", "reused", or "reused k of n" modules.
    """

    index: int
    timestep: float
    model: str
    d: float | None
    s: float | None
    cache: dict[str, str] = field(default_factory=dict)
    attention: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SwitchRecord:
    """One boundary of a call: at ``step`` the ``leaving`` model hands over to the ``entering`` one, and why.

    ``reason`` is "fixed" (an end at a given step, fraction or noise level: ``switch_step``), "delta"
    (``0 < s < delta`` after the step before: SRDiffusion's adaptive rule), or "max_switch_step" (its upper clamp).
    ``min_switch_step`` / ``max_switch_step`` are the bounds the boundary had in this call (for a fixed end both
    are its step) and ``delta`` the adaptive threshold (None for a fixed end).
    """

    step: int
    reason: str
    min_switch_step: int
    max_switch_step: int
    delta: float | None
    num_steps: int
    leaving: str = "large"
    entering: str = "small"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
