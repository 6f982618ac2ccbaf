"""Cooperation schedules: which model runs which steps of a call, as plain data.

A schedule is a list of segments ``(role, end)``: ``role`` is ``"large"`` (the pipeline's own transformer) or
``"small"``; ``end`` is where the segment stops (exclusive), ``None`` for the last one ("to the end of the call").
The same as a string: ``"small:20,large"``, ``"large:10,small:35,large"``. An end is one of

- a step index: ``20`` (an int);
- a fraction of the call's steps: ``0.4`` (a float in (0, 1)) or ``"40%"``, rounded half up, so that a schedule
  carries across step counts;
- a noise level: ``"t=0.875"``: the segment runs the steps whose timestep is at least 0.875 of the scheduler's
  ``num_train_timesteps`` (Wan2.2's ``boundary_ratio``; on Wan's flow matching this is sigma itself);
- SRDiffusion's adaptive rule: ``"delta"`` or ``"delta=0.003"``, only on a large segment followed by a small one:
  the large model hands over once the decrease ``s`` of the denoised estimate's relative change falls in
  ``(0, delta)`` (`policy.AdaptiveDecider`), within the clamps ``min_switch_step`` / ``max_switch_step``.

The last segment runs to the end of the call: its end is left out (or is the call's step count). `apply`'s
one-switch keywords are schedules too (`Schedule.one_switch`): ``delta=D`` is ``"large:delta=D,small"``,
``switch_step=k`` is ``"large:k,small"`` and ``switch_step=0`` is ``"small"``.

`Schedule.parse` validates what the user wrote (before anything changes); `Schedule.plan` resolves it for one
call's steps and timesteps into a `Plan`, which the router asks, step by step, which role runs next, and which
records every boundary it crossed (`SwitchRecord`). Every segment of a fixed end must get at least one step of
the call, else the call is refused before its first step; only an adaptive end may find the call too short (it
then never hands over, and the plan says so in `Plan.warning`). Plain float logic, no torch and no diffusers, so
that it can be tested alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..pipeline.trace import SwitchRecord
from .policy import DEFAULT_DELTA, AdaptiveBounds, AdaptiveDecider, check_bounds, check_delta, check_step, plain_number

#: The two roles: the pipeline's own transformer and the one `apply` brings.
ROLES: tuple[str, ...] = ("large", "small")


class Segment(NamedTuple):
    """One stretch of a call run by one model: steps ``first_step`` to ``end_step - 1``."""

    role: str
    first_step: int
    end_step: int


@dataclass(frozen=True)
class StepEnd:
    """The segment stops before this step index."""

    step: int

    def __str__(self) -> str:
        return str(self.step)


@dataclass(frozen=True)
class FractionEnd:
    """The segment stops after this fraction of the call's steps (rounded half up)."""

    fraction: float

    def __str__(self) -> str:
        return f"{self.fraction * 100:g}%"

    def step(self, num_steps: int) -> int:
        return math.floor(self.fraction * num_steps + 0.5)


@dataclass(frozen=True)
class NoiseEnd:
    """The segment runs while the timestep is at least ``ratio`` of the scheduler's ``num_train_timesteps``."""

    ratio: float

    def __str__(self) -> str:
        return f"t={self.ratio:g}"

    def step(self, timesteps: list[float], num_train_timesteps: float) -> int:
        boundary = self.ratio * num_train_timesteps
        return next((j for j, t in enumerate(timesteps) if t < boundary), len(timesteps))


@dataclass(frozen=True)
class AdaptiveEnd:
    """SRDiffusion's rule (`policy.AdaptiveDecider`): the large model hands over when ``0 < s < delta``, not
    before ``min_step`` and at ``max_step`` at the latest (None: the defaults, scaled to the call)."""

    delta: float = DEFAULT_DELTA
    min_step: int | None = None
    max_step: int | None = None

    def __str__(self) -> str:
        return "delta" if self.delta == DEFAULT_DELTA else f"delta={self.delta:g}"


End = StepEnd | FractionEnd | NoiseEnd | AdaptiveEnd | None


def parse_end(value: Any, where: str) -> End:
    """One segment's end from what the user wrote (int, float, str or an end object); a clear error otherwise."""
    value = plain_number(value)
    if value is None or isinstance(value, (StepEnd, FractionEnd, NoiseEnd, AdaptiveEnd)):
        return value
    if isinstance(value, bool):
        raise TypeError(
            f"{where}: an end is a step (int), a fraction of the steps (float in (0, 1) or 'NN%'), a "
            f"noise level ('t=R') or 'delta[=D]', got {value!r}"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{where}: a step cannot be negative, got {value}")
        if value == 0:
            raise ValueError(f"{where}: ends at step 0, so the segment is empty")
        return StepEnd(value)
    if isinstance(value, float):
        if not math.isfinite(value) or not 0.0 < value < 1.0:
            raise ValueError(
                f"{where}: a fraction of the steps must be in the open interval (0, 1), got {value!r} "
                "(a step index is an int)"
            )
        return FractionEnd(value)
    if isinstance(value, str):
        return _parse_end_text(value.strip(), where)
    raise TypeError(
        f"{where}: an end is a step (int), a fraction of the steps (float in (0, 1) or 'NN%'), a noise "
        f"level ('t=R') or 'delta[=D]', got {type(value).__name__}"
    )


def _number(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {what} must be finite, got {text!r}")
    return value


def _parse_end_text(text: str, where: str) -> End:
    if not text:
        raise ValueError(f"{where}: the end after ':' is missing")
    if text.endswith("%"):
        percent = _number(text[:-1], where, "a percentage")
        if not 0.0 < percent < 100.0:
            raise ValueError(f"{where}: a percentage of the steps must be between 0 and 100 (exclusive), got {text!r}")
        return FractionEnd(percent / 100.0)
    if text.startswith("t="):
        ratio = _number(text[2:], where, "a noise level t=R")
        if not 0.0 < ratio < 1.0:
            raise ValueError(
                f"{where}: a noise level t=R needs 0 < R < 1 (a fraction of the training timesteps), got {text!r}"
            )
        return NoiseEnd(ratio)
    if text == "delta" or text.startswith("delta="):
        delta = DEFAULT_DELTA if text == "delta" else _number(text[6:], where, "delta")
        if not 0.0 < delta < 1.0:
            raise ValueError(f"{where}: delta must be in the open interval (0, 1), got {text!r}")
        return AdaptiveEnd(delta)
    if text.lstrip("-").isdigit():
        return parse_end(int(text), where)
    try:
        number = float(text)
    except ValueError:
        raise ValueError(
            f"{where}: cannot read the end {text!r}: write a step ('20'), a fraction ('0.4' or '40%'), "
            "a noise level ('t=0.875') or 'delta' / 'delta=0.01'"
        ) from None
    return parse_end(number, where)


#: A segment as the user may write it in a list: ``(role, end)``, ``(role,)`` or ``role`` (the last two: no end).
def _pair(item: Any, where: str) -> tuple[Any, Any]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) in (1, 2):
        return (item[0], None) if len(item) == 1 else (item[0], item[1])
    raise TypeError(
        f"{where}: each segment is a (role, end) pair, or (role,) / role alone for the last one, got {item!r}"
    )


@dataclass(frozen=True)
class Schedule:
    """Which model runs which stretch of every call: ``parts`` of ``(role, end)``, validated.

    ``origin`` names the keyword the schedule came from (``"switch_step=30"``), so that a call it does not fit is
    refused in the words the user wrote."""

    parts: tuple[tuple[str, End], ...]
    origin: str | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def parse(cls, spec: Any) -> Schedule:
        """A schedule from a string (``"small:20,large"``), a list of ``(role, end)`` pairs (the last may be
        ``(role,)`` or ``role``), or a `Schedule`."""
        if isinstance(spec, Schedule):
            return spec
        if isinstance(spec, str):
            text = spec.strip()
            if not text:
                raise ValueError("schedule is an empty string; write segments such as 'small:20,large'")
            pairs: list[tuple[Any, Any]] = []
            for i, item in enumerate(text.split(",")):
                role, sep, end = item.strip().partition(":")
                if sep and not end.strip():
                    raise ValueError(f"schedule segment {i + 1} ({item.strip()!r}): the end after ':' is missing")
                pairs.append((role.strip(), end.strip() if sep else None))
        elif isinstance(spec, (list, tuple)):
            if not spec:
                raise ValueError("schedule is empty; give at least one (role, end) segment")
            pairs = [_pair(item, f"schedule segment {i + 1}") for i, item in enumerate(spec)]
        else:
            raise TypeError(
                f"schedule must be a string such as 'small:20,large' or a list of (role, end) pairs, "
                f"got {type(spec).__name__}"
            )
        parts = []
        for i, (role, end) in enumerate(pairs):
            where = f"schedule segment {i + 1}"
            if not isinstance(role, str):
                raise TypeError(f"{where}: the role must be 'large' or 'small', got {role!r}")
            if role not in ROLES:
                raise ValueError(f"{where}: unknown role {role!r}; the roles are 'large' and 'small'")
            parts.append((role, parse_end(end, f"{where} ({role})")))
        schedule = cls(tuple(parts))
        schedule._check()
        return schedule

    @classmethod
    def one_switch(
        cls, delta: Any = None, min_switch_step: Any = None, max_switch_step: Any = None, switch_step: Any = None
    ) -> Schedule:
        """`apply`'s one-switch keywords as the schedule they stand for: ``switch_step=k`` is ``"large:k,small"``
        (``0``: ``"small"``, the small model alone); otherwise ``"large:delta=D,small"`` with the clamps."""
        k = check_step("switch_step", switch_step)
        if k is not None:
            given = [
                n
                for n, v in (
                    ("delta", delta),
                    ("min_switch_step", min_switch_step),
                    ("max_switch_step", max_switch_step),
                )
                if v is not None
            ]
            if given:
                raise ValueError(
                    f"switch_step={k} is a fixed switch; {' and '.join(given)} "
                    f"{'applies' if len(given) == 1 else 'apply'} only to the adaptive switch. Pass one or the other."
                )
            if k == 0:
                return cls((("small", None),), origin="switch_step=0")
            return cls((("large", StepEnd(k)), ("small", None)), origin=f"switch_step={k}")
        lo, hi = check_bounds(min_switch_step, max_switch_step)
        return cls((("large", AdaptiveEnd(check_delta(delta), lo, hi)), ("small", None)))

    def with_bounds(self, min_switch_step: Any, max_switch_step: Any) -> Schedule:
        """The schedule with its adaptive end clamped (`apply(schedule=..., min_switch_step=...)`)."""
        if min_switch_step is None and max_switch_step is None:
            return self
        if self.adaptive is None:
            raise ValueError(
                "min_switch_step and max_switch_step clamp an adaptive end ('delta'); this schedule has none"
            )
        lo, hi = check_bounds(min_switch_step, max_switch_step)
        bounded = AdaptiveEnd(self.adaptive.delta, lo, hi)
        return Schedule(tuple((r, bounded if isinstance(e, AdaptiveEnd) else e) for r, e in self.parts), self.origin)

    def _check(self) -> None:
        """Everything that can be said without knowing a call's steps."""
        parts = self.parts
        for i, (role, end) in enumerate(parts):
            where = f"schedule segment {i + 1} ({role})"
            last = i == len(parts) - 1
            if end is None and not last:
                raise ValueError(
                    f"{where} has no end but is not the last segment; only the last runs to the end of the call"
                )
            if last and isinstance(end, (FractionEnd, NoiseEnd)):
                raise ValueError(
                    f"{where} is the last segment but ends at {end}, which stops before the call's "
                    "last step: leave its end out, the last segment runs to the end of the call"
                )
            if i > 0 and parts[i - 1][0] == role:
                raise ValueError(f"{where} follows another {role} segment: merge the two into one")
            if isinstance(end, AdaptiveEnd) and (role != "large" or last or parts[i + 1][0] != "small"):
                raise ValueError(
                    f"{where}: an adaptive end ('delta') ends a large segment that a small one follows "
                    "(SRDiffusion's hand-off)"
                )
        if sum(isinstance(e, AdaptiveEnd) for _, e in parts) > 1:
            raise ValueError("a schedule takes at most one adaptive end ('delta')")
        for kind, key, order in ((StepEnd, "step", 1), (FractionEnd, "fraction", 1), (NoiseEnd, "ratio", -1)):
            values = [(i, getattr(e, key)) for i, (_, e) in enumerate(parts) if isinstance(e, kind)]
            for (i, a), (j, b) in zip(values, values[1:]):
                if (b - a) * order <= 0:
                    what = "noise levels must decrease" if order < 0 else "ends must increase"
                    raise ValueError(
                        f"schedule segments {i + 1} and {j + 1}: {what} ({parts[i][1]} then {parts[j][1]})"
                    )

    # ------------------------------------------------------------------ reading
    @property
    def adaptive(self) -> AdaptiveEnd | None:
        return next((e for _, e in self.parts if isinstance(e, AdaptiveEnd)), None)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r for r, _ in self.parts)

    def __str__(self) -> str:
        return ",".join(role if end is None else f"{role}:{end}" for role, end in self.parts)

    def _where(self, i: int) -> str:
        role, end = self.parts[i]
        return f"schedule segment {i + 1} ({role}{'' if end is None else f':{end}'})"

    # ------------------------------------------------------------------ one call
    def plan(
        self, timesteps: list[float], num_train_timesteps: float, large_until: tuple[int, str] | None = None
    ) -> Plan:
        """This schedule for one call whose steps have these ``timesteps``: every fixed end as a step index, the
        adaptive end's bounds. ``large_until``: ``(step, why)`` when the pipeline cannot run its large model from
        that step on. A schedule that does not fit the call is a clear error (before its first step)."""
        n = len(timesteps)
        try:
            resolved = self._resolve(n, timesteps, num_train_timesteps)
        except ValueError as err:
            if self.origin is None or not self.origin.startswith("switch_step="):
                raise
            k = self.parts[0][1].step if isinstance(self.parts[0][1], StepEnd) else 0
            raise ValueError(
                f"{self.origin} hands over to the small model at step {k}, but this call has {n} "
                f"steps: give a switch_step below num_inference_steps, or call handle.remove() to "
                "run the large model alone"
            ) from err
        plan = Plan(n, resolved, self)
        if large_until is not None:
            plan.cap_large(*large_until)
        return plan

    def _resolve(
        self, n: int, timesteps: list[float], num_train_timesteps: float
    ) -> list[tuple[str, int | AdaptiveBounds]]:
        resolved: list[tuple[str, int | AdaptiveBounds]] = []
        start = 0
        for i, (role, end) in enumerate(self.parts):
            where = self._where(i)
            if isinstance(end, AdaptiveEnd):
                bounds = self._adaptive_bounds(end, i, start, n, timesteps, num_train_timesteps, where)
                resolved.append((role, bounds))
                start = bounds.min_step
                continue
            step = self._end_step(end, n, timesteps, num_train_timesteps)
            if step > n:
                raise ValueError(f"{where} ends at step {step}, beyond this call's {n} steps")
            if end is not None and i == len(self.parts) - 1 and step != n:
                raise ValueError(
                    f"{where} is the last segment but ends at step {step} of {n}: leave its end out "
                    "to run it to the end of the call"
                )
            if step <= start and not (i > 0 and isinstance(self.parts[i - 1][1], AdaptiveEnd) and start >= n):
                span = (
                    f"it would start and end at step {step}"
                    if step == start
                    else f"it would end at step {step}, before it starts at step {start}"
                )
                raise ValueError(
                    f"{where} gets no step of a call of {n} steps ({span}): give the call more steps or move the end"
                )
            resolved.append((role, step))
            start = max(start, step)
        return resolved

    @staticmethod
    def _end_step(end: End, n: int, timesteps: list[float], num_train_timesteps: float) -> int:
        if end is None:
            return n
        if isinstance(end, StepEnd):
            return end.step
        if isinstance(end, FractionEnd):
            return end.step(n)
        assert isinstance(end, NoiseEnd)
        return end.step(timesteps, num_train_timesteps)

    def _adaptive_bounds(
        self,
        end: AdaptiveEnd,
        i: int,
        start: int,
        n: int,
        timesteps: list[float],
        num_train_timesteps: float,
        where: str,
    ) -> AdaptiveBounds:
        bounds = AdaptiveBounds.resolve(end.delta, end.min_step, end.max_step, n)
        floor = start + 1 if i > 0 else 0  # after a segment of another model: at least one large step
        lo, hi = max(bounds.min_step, floor), max(bounds.max_step, floor)
        following = self.parts[i + 1][1]
        if following is not None:  # the small segment after it has a fixed end: leave it at least one step
            nxt = min(self._end_step(following, n, timesteps, num_train_timesteps), n)
            hi = min(hi, nxt - 1)
            if lo > hi:
                raise ValueError(
                    f"{where}: no room for the adaptive end in a call of {n} steps (not before step "
                    f"{lo}, and the next segment ends at step {nxt})"
                )
        return AdaptiveBounds(end.delta, lo, max(hi, lo))


class Plan:
    """One call's schedule, asked step by step (in order) which role runs; the adaptive end, if any, is decided
    from the observed relative changes ``d`` (`observe`). Every boundary crossed is recorded (`boundaries`)."""

    def __init__(self, num_steps: int, parts: list[tuple[str, int | AdaptiveBounds]], schedule: Schedule) -> None:
        self.num_steps = num_steps
        self.schedule = schedule
        self._parts = parts
        self._index = 0
        adaptive = next((e for _, e in parts if isinstance(e, AdaptiveBounds)), None)
        self._decider = AdaptiveDecider(adaptive) if adaptive is not None else None
        #: The role of each step decided so far.
        self.roles: list[str] = []
        #: Every boundary crossed so far, in order.
        self.boundaries: list[SwitchRecord] = []

    @property
    def warning(self) -> str | None:
        """Why this call will not hand over as its schedule says, if so: an adaptive end the call is too short for."""
        for role, end in self._parts:
            if isinstance(end, AdaptiveBounds) and end.min_step >= self.num_steps:
                return (
                    f"this call has {self.num_steps} steps, and the adaptive hand-off ('delta') comes at step "
                    f"{end.min_step} at the earliest: the {role} model runs every step"
                )
        return None

    def cap_large(self, latest: int, why: str) -> None:
        """The large model cannot run from step ``latest`` on: an adaptive end is clamped there; a fixed large
        segment beyond it is an error naming ``why``."""
        for i, (role, end) in enumerate(self._parts):
            if role != "large":
                continue
            if isinstance(end, AdaptiveBounds):
                capped = AdaptiveBounds(end.delta, min(end.min_step, latest), min(end.max_step, latest))
                self._parts[i] = (role, capped)
                self._decider = AdaptiveDecider(capped)
                continue
            if end > latest:
                origin = self.schedule.origin
                if origin is not None:
                    raise ValueError(f"{origin} is after step {latest}, the latest this pipeline allows ({why})")
                raise ValueError(
                    f"schedule segment {i + 1} runs the large model up to step {end - 1}, but this "
                    f"pipeline cannot run it from step {latest} on ({why})"
                )

    def _start_of(self, i: int) -> int:
        if i == 0:
            return 0
        end = self._parts[i - 1][1]
        return end.min_step if isinstance(end, AdaptiveBounds) else end

    # ------------------------------------------------------------------ step by step
    def needs_metric(self) -> bool:
        """Whether the next observed ``d`` can still change a decision (else it need not reach the host)."""
        if self._decider is None:
            return False
        return any(isinstance(end, AdaptiveBounds) for _, end in self._parts[self._index : -1])

    def observe(self, step: int, d: float | None) -> None:
        """``d_step`` after step ``step`` (None where undefined or not needed)."""
        if self._decider is not None:
            self._decider.observe(step, d)

    def role_at(self, step: int) -> str:
        """The role that runs ``step``; call once per step, in order, before it runs."""
        if step != len(self.roles):
            raise ValueError(f"steps must be decided in order: expected step {len(self.roles)}, got {step}")
        while self._index < len(self._parts) - 1:
            role, end = self._parts[self._index]
            if isinstance(end, AdaptiveBounds):
                assert self._decider is not None
                reason = self._decider.decide(step) if step < self.num_steps else None
                lo, hi, delta = end.min_step, end.max_step, end.delta
            else:
                reason = "fixed" if step >= end else None
                lo = hi = end
                delta = None
            if reason is None:
                break
            self._index += 1
            self.boundaries.append(
                SwitchRecord(step, reason, lo, hi, delta, self.num_steps, role, self._parts[self._index][0])
            )
        role = self._parts[self._index][0]
        self.roles.append(role)
        return role

    def next_start(self, role: str, after: int) -> int | None:
        """The first step after ``after`` that ``role`` runs by the fixed ends ahead (None: none known, or an
        adaptive end decides it)."""
        for i in range(self._index, len(self._parts)):
            if i > self._index and self._parts[i][0] == role:
                start = self._start_of(i)
                end = self._parts[i - 1][1]
                return None if isinstance(end, AdaptiveBounds) else (start if start > after else None)
        return None

    # ------------------------------------------------------------------ after the call
    @property
    def segments(self) -> list[Segment]:
        return segments_of(self.roles)

    @property
    def handover(self) -> SwitchRecord | None:
        """The first boundary from the large model to the small one (SRDiffusion's switch), or None."""
        return next((b for b in self.boundaries if b.leaving == "large" and b.entering == "small"), None)


def segments_of(roles: list[str]) -> list[Segment]:
    """Runs of one role in a per-step list: ``["large", "large", "small"]`` -> two segments."""
    out: list[Segment] = []
    for j, role in enumerate(roles):
        if out and out[-1].role == role:
            out[-1] = out[-1]._replace(end_step=j + 1)
        else:
            out.append(Segment(role, j, j + 1))
    return out


def roles_of(
    schedule: Any, num_steps: int, num_train_timesteps: float = 1000.0, timesteps: list[float] | None = None
) -> list[str]:
    """The roles a schedule with fixed ends gives a call of ``num_steps`` (timesteps evenly spaced from the top
    unless given): what a schedule costs before it runs. An adaptive end is refused here."""
    schedule = Schedule.parse(schedule)
    if schedule.adaptive is not None:
        raise ValueError("an adaptive end is decided while the call runs; its roles are known only afterwards")
    if timesteps is None:
        timesteps = [num_train_timesteps * (1 - j / num_steps) for j in range(num_steps)]
    plan = schedule.plan(timesteps, num_train_timesteps)
    return [plan.role_at(j) for j in range(num_steps)]
