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
    """Why the last call switched where it did: its effective bounds and the rule that fired.

    ``reason`` is "fixed" (``switch_step``), "delta" (``0 < s < delta`` after the step before), or
    "max_switch_step" (the upper clamp), and None if the call never switched. For a fixed switch,
    ``min_switch_step == max_switch_step`` is the fixed step and ``delta`` is None.
    """

    step: int | None
    reason: str | None
    min_switch_step: int
    max_switch_step: int
    delta: float | None
    num_steps: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
