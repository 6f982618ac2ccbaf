"""What happened in a pipeline call, step by step."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepRecord:
    """One denoising step: which model ran it and the switching metric observed after it.

    ``d`` is undefined (None) at step 0 and ``s`` at steps 0 and 1. ``cache`` holds, per model call
    ("cond", "uncond", "cond_uncond"), whether a caching acceleration computed or skipped the blocks.
    """

    index: int
    timestep: float
    model: str
    d: float | None
    s: float | None
    cache: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
