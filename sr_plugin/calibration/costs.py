"""What a step costs on this machine, from the steps of every timed run: the speed model of the calibration.

A step's kind is the model that ran it and what the caches did in it (TeaCache's computed/skipped per CFG branch,
PAB's reused attention): its cost is the median time of all steps of that kind over every run of the calibration,
so one disturbed run moves no figure. A run's modelled time is the sum of its steps' costs; large only's, its
steps at the cost of a plain large step. Step costs come from the runs the calibration makes anyway (large only and
small only give the plain steps of each model, one run per model at least).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

StepKind = tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


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
        return self.cost.get((model, (), ()))

    def time(self, call: Sequence[tuple[Any, float]]) -> float:
        """The modelled time of one call."""
        return sum(self.cost[step_kind(record)] for record, _ in call)

    def as_dict(self) -> dict[str, Any]:
        return {kind_name(k): {"seconds": v, "steps": self.count[k]} for k, v in sorted(self.cost.items())}
