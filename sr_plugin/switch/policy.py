"""SRDiffusion's adaptive hand-off rule: when the large (sketching) model hands over to the small (rendering) one.

Plain float logic, no torch and no diffusers, so that it can be unit-tested on synthetic sequences. The rule
(docs/method.md, "The adaptive rule"):

- ``d_j`` is the relative change of the denoised estimate after step ``j`` (``j >= 1``),
- ``s_j = d_{j-1} - d_j`` is its decrease (``j >= 2``),
- the hand-off happens before step ``i`` when ``i >= min_step`` and (``0 < s_{i-1} < delta`` or
  ``i >= max_step``). It is one-way within its segment.

A schedule's adaptive end (`sr_plugin.switch.schedule.AdaptiveEnd`) is resolved per call into `AdaptiveBounds`,
and one `AdaptiveDecider` per call applies the rule inside the call's plan.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

#: Default switching threshold on the second-order term ``s``. 0.01 is the value SRDiffusion uses for
#: its reported results; smaller values keep the large model longer (better fidelity, less speed-up).
DEFAULT_DELTA = 0.01

#: The rule needs ``s_{i-1}``, defined from step 2 on, so no adaptive switch can happen before step 3.
EARLIEST_ADAPTIVE_SWITCH = 3

#: Why a boundary fell where it did: a fixed end, the adaptive rule (0 < s < delta), or its upper clamp.
SWITCH_REASONS: tuple[str, ...] = ("fixed", "delta", "max_switch_step")


def default_min_switch_step(num_steps: int) -> int:
    """At least 10% of the run is sketched by the large model (and never fewer than 3 steps)."""
    return max(EARLIEST_ADAPTIVE_SWITCH, math.ceil(0.1 * num_steps))


def default_max_switch_step(num_steps: int) -> int:
    """At the latest, the small model takes over once 60% of the steps are done."""
    return math.floor(0.6 * num_steps)


def plain_number(value: object) -> object:
    """numpy's scalars (registered as numbers.Integral / numbers.Real) as Python ints and floats."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def check_step(name: str, value: object) -> int | None:
    """A user's step index (None allowed): an int >= 0, else a clear error naming ``name``."""
    value = plain_number(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int step index, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_delta(delta: object) -> float:
    """A user's threshold: a number in the open interval (0, 1) (None: the default)."""
    delta = plain_number(delta)
    if delta is None:
        return DEFAULT_DELTA
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < float(delta) < 1.0:
        raise ValueError(f"delta must be a number in the open interval (0, 1), got {delta!r}")
    return float(delta)


def check_bounds(min_switch_step: object, max_switch_step: object) -> tuple[int | None, int | None]:
    """The adaptive rule's clamps as the user gave them (None: the defaults, scaled to each call)."""
    lo = check_step("min_switch_step", min_switch_step)
    hi = check_step("max_switch_step", max_switch_step)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"min_switch_step={lo} is greater than max_switch_step={hi}")
    return lo, hi


@dataclass(frozen=True)
class AdaptiveBounds:
    """The adaptive rule for one call: its threshold and the steps between which it may hand over."""

    delta: float
    min_step: int
    max_step: int

    @classmethod
    def resolve(
        cls, delta: float, min_switch_step: int | None, max_switch_step: int | None, num_steps: int
    ) -> AdaptiveBounds:
        """The bounds for a call of ``num_steps``. Defaults scale with the call; where a default would cross a
        bound the user gave, the user's bound wins; where the two defaults cross (short calls), max = min."""
        lo, hi = min_switch_step, max_switch_step
        if lo is None and hi is None:
            lo, hi = default_min_switch_step(num_steps), default_max_switch_step(num_steps)
            hi = max(hi, lo)
        elif lo is None:
            assert hi is not None
            lo = min(default_min_switch_step(num_steps), hi)
        elif hi is None:
            hi = max(default_max_switch_step(num_steps), lo)
        return cls(delta, lo, hi)


def decreases(d: list[float | None]) -> list[float | None]:
    """``s_j = d_{j-1} - d_j``, how much the relative change ``d`` shrank from one step to the next, wherever
    both are defined (None elsewhere): a first difference of ``d``, negated. Since ``d`` is itself the first
    difference of x0 (relative), ``s`` is the rule's second-order term."""
    out: list[float | None] = []
    for j, current in enumerate(d):
        previous = d[j - 1] if j > 0 else None
        out.append(None if previous is None or current is None else previous - current)
    return out


class AdaptiveDecider:
    """Applies the rule within one call: fed ``d_j`` after each step, asked before each step whether the
    hand-off happens there."""

    def __init__(self, bounds: AdaptiveBounds) -> None:
        self.bounds = bounds
        self._d: list[float | None] = []

    def observe(self, step: int, d: float | None) -> None:
        """Record ``d_step`` (None for step 0, where no earlier estimate exists, or where it is not needed)."""
        if step != len(self._d):
            raise ValueError(f"observations must come in step order: expected step {len(self._d)}, got {step}")
        self._d.append(d)

    def s(self, step: int) -> float | None:
        """``s_step`` from what was observed, or None where undefined."""
        if step < 1 or step >= len(self._d):
            return None
        a, b = self._d[step - 1], self._d[step]
        return None if a is None or b is None else a - b

    def decide(self, step: int) -> str | None:
        """Before ``step`` runs: the reason the hand-off happens there ("delta" or "max_switch_step"), or None."""
        b = self.bounds
        if step < b.min_step:
            return None
        if step >= b.max_step:
            return "max_switch_step"
        s_prev = self.s(step - 1)
        return "delta" if s_prev is not None and 0.0 < s_prev < b.delta else None
