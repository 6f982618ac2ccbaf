"""`sr_plugin.calibration.confirm`: a calibration's choice checked on pairs it was not chosen on.

Picking the fastest of many candidates that hold a floor on the same pairs favours the ones that were lucky on
those pairs (the winner's curse): with tens of candidates, 64 pairs and a floor of one or two prompts, the chosen
one is often just above the floor by chance, and falls below it on other pairs. ``confirm`` reruns the candidates
that held the floor, fastest first, on fresh (prompt, seed) pairs with large only as the reference on the same
pairs, and stops at the first that holds the floor there too. What it returns is a `CalibrationReport` of the
fresh pairs: its ``chosen`` is that candidate (or None and the closest of those tried).

Cost: large only plus each candidate tried, on the fresh pairs: ``(tried + 1) x len(prompts)`` videos.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..pipeline.timing import StepClock
from .candidates import Candidate
from .costs import StepCosts
from .report import CalibrationReport
from .search import (_candidates, _checked_floor, _measure, _pairs, _result, _run, _Runs, _set_up, _take_down)
from .stats import Floor


def confirm(pipe: Any, small: Any, candidates: Any, prompts: Sequence[Any], *, floor: Floor | None = None,
            scorer: Callable[[Any, str], bool] | None = None, num_inference_steps: int = 50, seed: int = 0,
            apply_kwargs: Mapping[str, Any] | None = None, say: Callable[[str], Any] | None = print,
            **call: Any) -> CalibrationReport:
    """Rerun ``candidates`` on ``prompts``, in order, until one holds ``floor`` against large only on them.

    Args:
        candidates: a `CalibrationReport` (its candidates within the floor, the fastest modelled first; its floor
            is the default), or schedules / `Candidate`s in the order to try them.
        prompts: fresh prompts (seeds ``seed``, ``seed + 1``, ...) or ``(prompt, seed)`` pairs; with a report,
            none of them may be one of its pairs.
        floor, scorer, num_inference_steps, apply_kwargs, call: as for `sr_plugin.calibrate`.
    """
    order, floor = _order(candidates, floor, scorer)
    pairs = _pairs(prompts, seed)
    if isinstance(candidates, CalibrationReport):
        reused = sorted(set(pairs) & {tuple(p) for p in candidates.pairs})
        if reused:
            raise ValueError(f"confirming pairs must be new: {reused[0]} was one of the calibration's pairs")
    if not order:
        raise ValueError("no candidate to confirm: the calibration found none within its floor")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    apply_kwargs = dict(apply_kwargs or {})
    for candidate in order:  # each one applies (and is removed) before the first video
        _take_down(*_set_up(pipe, small, candidate, apply_kwargs))
    say = say or (lambda _: None)
    say(f"sr-plugin confirm: up to {len(order)} candidates, fastest first, + large only on {len(pairs)} new pairs; "
        f"floor: {floor.describe()}")
    start = time.perf_counter()
    clock = StepClock().install(pipe)
    measured: list[tuple[Candidate, _Runs]] = []
    try:
        _run(pipe, pairs, num_inference_steps, call, scorer)  # one-off first-call costs, untimed
        clock.calls.clear()
        reference = _measure(pipe, small, Candidate(None), pairs, num_inference_steps, call, scorer, apply_kwargs,
                             clock)
        for i, candidate in enumerate(order):
            runs = _measure(pipe, small, candidate, pairs, num_inference_steps, call, scorer, apply_kwargs, clock)
            measured.append((candidate, runs))
            costs = StepCosts([c for r in [reference] + [m for _, m in measured] for c in r.calls])
            row = _result(candidate, runs, reference, costs, floor, scorer is not None)
            say(f"[{i + 1}/{len(order)}] {candidate.name}: {'holds' if row.within_floor else 'misses'} the floor on "
                f"the new pairs, {statistics.mean(runs.loop_s):.2f} s a video")
            if row.within_floor:
                break
    finally:
        clock.remove()
    costs = StepCosts([c for r in [reference] + [m for _, m in measured] for c in r.calls])
    rows = [_result(Candidate(None), reference, reference, costs, floor, scorer is not None)]
    rows += [_result(c, runs, reference, costs, floor, scorer is not None) for c, runs in measured]
    videos = (len(measured) + 1) * len(pairs)
    return CalibrationReport.build(rows, floor, pairs, num_inference_steps, videos, time.perf_counter() - start,
                                   costs)


#: The seeds of confirming pairs made from a calibration's own pairs: each pair's seed plus this.
NEW_SEED_OFFSET = 500_000


def new_seeds(pairs: Sequence[tuple[str, int]], offset: int = NEW_SEED_OFFSET) -> list[tuple[str, int]]:
    """The same prompts with new seeds (each seed plus ``offset``): confirming pairs for a calibration's pairs."""
    return [(prompt, seed + offset) for prompt, seed in pairs]


def _order(candidates: Any, floor: Floor | None, scorer: Any) -> tuple[list[Candidate], Floor]:
    if isinstance(candidates, CalibrationReport):
        within = sorted((r for r in candidates.rows[1:] if r.within_floor), key=lambda r: -r.modelled_speedup)
        order = [Candidate(r.schedule, r.accel) for r in within]
        floor = floor if floor is not None else candidates.floor
    else:
        order = _candidates(candidates, ())
    return order, _checked_floor(floor, scorer)
