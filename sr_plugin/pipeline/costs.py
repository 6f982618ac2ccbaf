"""The one cost model: a call's time is the sum of its steps' costs, and a cooperation's speed-up is large only's
time over its own (docs/method.md, "The cost model"). Plain Python, no torch.

Two sources of step costs, one formula:

- per role, from a ratio or from measured step times: ``{"large": 1.0, "small": 1 / r}`` gives SRDiffusion's
  bound ``N / (k + (N - k) / r)`` for one switch at ``k`` (`speedup`, `ideal_speedup`);
- per step kind, from timed calls (`StepCosts`): a kind is the model that ran the step and what the caches did
  in it (TeaCache's computed/skipped per CFG branch, PAB's reused attention); its cost is the median time of all
  steps of that kind over every run, so one disturbed run moves no figure.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

StepKind = tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


def role_costs(ratio: float) -> dict[str, float]:
    """Step costs in large steps when a large step costs ``ratio`` small ones."""
    if not ratio > 0:
        raise ValueError(f"a step-cost ratio must be positive, got {ratio!r}")
    return {"large": 1.0, "small": 1.0 / ratio}


def call_time(roles: Sequence[str], costs: Mapping[str, float]) -> float:
    """The time of a call whose steps ran on these roles, from each role's cost per step."""
    return sum(costs[r] for r in roles)


def speedup(roles: Sequence[str], costs: Mapping[str, float]) -> float:
    """Large only's time (as many steps, each at ``costs["large"]``) over this call's."""
    if not roles:
        return 1.0
    return len(roles) * costs["large"] / call_time(roles, costs)


def ideal_speedup(roles: Sequence[str], ratio: float) -> float:
    """`speedup` with a large step costing ``ratio`` small ones: SRDiffusion's ``N / (k + (N - k) / r)`` for one
    switch at ``k``, and its generalisation to any cooperation schedule."""
    return speedup(roles, role_costs(ratio))


def one_switch_roles(switch_step: int, num_steps: int) -> list[str]:
    """The roles of a call that switches once at ``switch_step`` (``num_steps`` or more: never)."""
    k = min(max(switch_step, 0), num_steps)
    return ["large"] * k + ["small"] * (num_steps - k)


def mean_time_ratio(calls: Sequence[Sequence[str]], costs: Mapping[str, float]) -> float:
    """The mean, over calls, of each call's time over large only's (the inverse of `speedup`, averaged)."""
    if not calls:
        raise ValueError("no runs to model")
    return statistics.mean(1.0 / speedup(roles, costs) for roles in calls)


# ---------------------------------------------------------------------------------------------- per step kind
def step_kind(record: Any) -> StepKind:
    """The kind of one step (`StepRecord`): its model and its cache and attention decisions per branch."""
    return record.model, tuple(sorted(record.cache.items())), tuple(sorted(record.attention.items()))


def kind_name(kind: StepKind) -> str:
    model, cache, attention = kind
    extra = [f"{b}: {v}" for b, v in cache] + [f"{b} attention {v}" for b, v in attention]
    return model if not extra else f"{model} ({', '.join(extra)})"


class StepCosts:
    """Median seconds per step kind, fitted on timed calls: each a list of ``(StepRecord, seconds)``."""

    def __init__(self, calls: Sequence[Sequence[tuple[Any, float]]]) -> None:
        samples: dict[StepKind, list[float]] = {}
        for call in calls:
            for record, seconds in call:
                samples.setdefault(step_kind(record), []).append(seconds)
        self.cost = {kind: statistics.median(values) for kind, values in samples.items()}
        self.count = {kind: len(values) for kind, values in samples.items()}

    def plain(self, model: str) -> float | None:
        """A step of ``model`` with no cache decision (None: none was timed)."""
        return self.cost.get((model, (), ()))

    def time(self, call: Sequence[tuple[Any, float]] | Sequence[Any]) -> float:
        """The modelled time of one call: its steps (records, or ``(record, seconds)`` pairs) at their kinds'
        costs."""
        return sum(self.cost[step_kind(step[0] if isinstance(step, tuple) else step)] for step in call)

    def speedup(self, call: Sequence[tuple[Any, float]] | Sequence[Any]) -> float:
        """Large only's modelled time (as many plain large steps) over this call's."""
        large = self.plain("large")
        if large is None:
            raise ValueError("no plain large-model step was timed")
        return len(call) * large / self.time(call)

    def as_dict(self) -> dict[str, Any]:
        return {kind_name(k): {"seconds": v, "steps": self.count[k]} for k, v in sorted(self.cost.items())}
