"""The switching rule: when the large (sketching) model hands over to the small (rendering) model.

Plain float logic, no torch and no diffusers, so that it can be unit-tested on synthetic sequences.
The rule is SRDiffusion's adaptive criterion, written out in ``shared/reference.md`` section 2:

- ``d_j`` is the relative change of the denoised estimate after step ``j`` (``j >= 1``),
- ``s_j = d_{j-1} - d_j`` is its decrease (``j >= 2``),
- the switch happens before step ``i`` when ``i >= min_switch_step`` and
  (``0 < s_{i-1} < delta`` or ``i >= max_switch_step``). It is one-way.
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


def default_min_switch_step(num_steps: int) -> int:
    """At least 10% of the run is sketched by the large model (and never fewer than 3 steps)."""
    return max(EARLIEST_ADAPTIVE_SWITCH, math.ceil(0.1 * num_steps))


def default_max_switch_step(num_steps: int) -> int:
    """At the latest, the small model takes over once 60% of the steps are done."""
    return math.floor(0.6 * num_steps)


def _check_step(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int step index, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def plain_number(value: object) -> object:
    """numpy's scalars (registered as numbers.Integral / numbers.Real) as Python ints and floats."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


@dataclass(frozen=True)
class SwitchOptions:
    """What the user asked for, validated once in `apply`; resolved against the step count per call."""

    delta: float = DEFAULT_DELTA
    min_switch_step: int | None = None
    max_switch_step: int | None = None
    switch_step: int | None = None

    @classmethod
    def from_user(
        cls,
        delta: float | None = None,
        min_switch_step: int | None = None,
        max_switch_step: int | None = None,
        switch_step: int | None = None,
    ) -> "SwitchOptions":
        """Validate the user's arguments; every problem is a clear error before any generation."""
        delta, min_switch_step, max_switch_step, switch_step = map(
            plain_number, (delta, min_switch_step, max_switch_step, switch_step))
        if switch_step is not None:
            _check_step("switch_step", switch_step)
            given = [n for n, v in (("delta", delta), ("min_switch_step", min_switch_step),
                                    ("max_switch_step", max_switch_step)) if v is not None]
            if given:
                raise ValueError(
                    f"switch_step={switch_step} is a fixed switch; {' and '.join(given)} "
                    f"{'applies' if len(given) == 1 else 'apply'} only to the adaptive switch. Pass one or the other."
                )
            return cls(switch_step=switch_step)
        if delta is None:
            delta = DEFAULT_DELTA
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < float(delta) < 1.0:
            raise ValueError(f"delta must be a number in the open interval (0, 1), got {delta!r}")
        _check_step("min_switch_step", min_switch_step)
        _check_step("max_switch_step", max_switch_step)
        if min_switch_step is not None and max_switch_step is not None and min_switch_step > max_switch_step:
            raise ValueError(
                f"min_switch_step={min_switch_step} is greater than max_switch_step={max_switch_step}"
            )
        return cls(float(delta), min_switch_step, max_switch_step, None)

    def resolve(self, num_steps: int) -> "SwitchSchedule":
        """The concrete bounds for a run of ``num_steps`` steps.

        Defaults scale with the run. Where a default would cross a bound the user gave explicitly, the
        explicit bound wins; where the two defaults cross (short runs), max_switch_step = min_switch_step.
        """
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        if self.switch_step is not None:
            return SwitchSchedule(num_steps, None, self.switch_step, self.switch_step, fixed=True)
        lo = self.min_switch_step
        hi = self.max_switch_step
        if lo is None and hi is None:
            lo, hi = default_min_switch_step(num_steps), default_max_switch_step(num_steps)
            hi = max(hi, lo)
        elif lo is None:
            lo = min(default_min_switch_step(num_steps), hi)
        elif hi is None:
            hi = max(default_max_switch_step(num_steps), lo)
        return SwitchSchedule(num_steps, self.delta, lo, hi, fixed=False)


@dataclass(frozen=True)
class SwitchSchedule:
    """Bounds for one call. With ``fixed``, the switch falls before step ``min_step`` (= ``max_step``)."""

    num_steps: int
    delta: float | None
    min_step: int
    max_step: int
    fixed: bool


def cap_schedule(schedule: SwitchSchedule, latest: int, why: str) -> SwitchSchedule:
    """The schedule with the switch at step ``latest`` at the latest (a pipeline that cannot run the large
    model beyond it). A fixed switch after it is an error naming ``why``."""
    if schedule.fixed:
        if schedule.min_step > latest:
            raise ValueError(f"switch_step={schedule.min_step} is after step {latest}, the latest this pipeline "
                             f"allows ({why})")
        return schedule
    return SwitchSchedule(schedule.num_steps, schedule.delta, min(schedule.min_step, latest),
                          min(schedule.max_step, latest), fixed=False)


def decreases(d: list[float | None]) -> list[float | None]:
    """``s_j = d_{j-1} - d_j``, how much the relative change ``d`` shrank from one step to the next, wherever
    both are defined (None elsewhere): a first difference of ``d``, negated. Since ``d`` is itself the first
    difference of x0 (relative), ``s`` is the rule's second-order term."""
    return [
        None if j == 0 or d[j - 1] is None or d[j] is None else d[j - 1] - d[j] for j in range(len(d))
    ]


#: Why a call switched: the fixed step, the adaptive rule (0 < s < delta), or the adaptive upper clamp.
SWITCH_REASONS: tuple[str, ...] = ("fixed", "delta", "max_switch_step")


class SwitchPolicy:
    """Decides, step by step, whether the small model runs. One instance per pipeline call."""

    def __init__(self, schedule: SwitchSchedule) -> None:
        self.schedule = schedule
        self._d: list[float | None] = []
        self.switch_step: int | None = None
        #: One of SWITCH_REASONS once switched, else None.
        self.switch_reason: str | None = None

    @property
    def switched(self) -> bool:
        return self.switch_step is not None

    def needs_metric(self) -> bool:
        """Whether the next observed ``d`` can still change a decision (else it need not reach the host)."""
        return not self.schedule.fixed and not self.switched

    def observe(self, step: int, d: float | None) -> None:
        """Record ``d_step`` (None for step 0, where no earlier estimate exists)."""
        if step != len(self._d):
            raise ValueError(f"observations must come in step order: expected step {len(self._d)}, got {step}")
        self._d.append(d)

    def s(self, step: int) -> float | None:
        """``s_step`` from what was observed, or None where undefined."""
        if step < 1 or step >= len(self._d):
            return None
        a, b = self._d[step - 1], self._d[step]
        return None if a is None or b is None else a - b

    def use_small(self, step: int) -> bool:
        """Decide, before ``step`` runs, whether the small model runs it. Once True, always True."""
        if self.switched:
            return True
        sched = self.schedule
        if step >= sched.num_steps:
            return False
        reason = None
        if sched.fixed:
            reason = "fixed" if step >= sched.min_step else None
        elif step < sched.min_step:
            reason = None
        elif step >= sched.max_step:
            reason = "max_switch_step"
        else:
            s_prev = self.s(step - 1)
            reason = "delta" if s_prev is not None and 0.0 < s_prev < sched.delta else None
        if reason is not None:
            self.switch_step = step
            self.switch_reason = reason
        return reason is not None
