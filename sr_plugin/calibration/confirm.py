"""`sr_plugin.calibration.confirm`: a calibration's choice checked on pairs it was not chosen on.

Picking the fastest of many candidates that hold a floor on the same pairs favours the ones that were lucky on
those pairs (the winner's curse): with tens of candidates, 64 pairs and a floor of one or two prompts, the chosen
one is often just above the floor by chance, and falls below it on other pairs. ``confirm`` reruns the choice, then
the other candidates that held the floor and those a fastest-first search never ran, fastest first, on fresh
(prompt, seed) pairs with large only as the reference on the same pairs, and stops at the first that holds the
floor there too. It runs the way the fastest-first search does (`search.Search`): large only on every pair first,
each candidate pair by pair and dropped as soon as it can no longer hold the floor, steps shared with an earlier run
replayed. What it returns is a `CalibrationReport` of the fresh pairs: its ``chosen`` is that candidate (or None and
the closest of those tried).

Cost: large only on the fresh pairs, and each candidate tried until it holds or drops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .candidates import Candidate
from .report import CalibrationReport
from .runner import Runner
from .search import Search, checked_candidates, checked_floor, checked_pairs, checked_steps, finished_report
from .stats import Floor
from .tape import DEFAULT_TAPE_BYTES


def confirm(
    pipe: Any,
    small: Any,
    candidates: Any,
    prompts: Sequence[Any],
    *,
    floor: Floor | None = None,
    scorer: Callable[[Any, str], bool] | None = None,
    num_inference_steps: int = 50,
    seed: int = 0,
    apply_kwargs: Mapping[str, Any] | None = None,
    tape_bytes: int = DEFAULT_TAPE_BYTES,
    say: Callable[[str], Any] | None = print,
    **call: Any,
) -> CalibrationReport:
    """Rerun ``candidates`` on ``prompts``, in order, until one holds ``floor`` against large only on them.

    Args:
        candidates: a `CalibrationReport` (its choice first, then its other candidates within the floor, then
            those a fastest-first search did not need to run, each group the fastest modelled first; its floor is
            the default), or schedules / `Candidate`s in the order to try them.
        prompts: fresh prompts (seeds ``seed``, ``seed + 1``, ...) or ``(prompt, seed)`` pairs; with a report,
            none of them may be one of its pairs.
        floor, scorer, num_inference_steps, apply_kwargs, call: as for `sr_plugin.calibrate`.
    """
    order, floor = _order(candidates, floor, scorer)
    pairs = checked_pairs(prompts, seed)
    if isinstance(candidates, CalibrationReport):
        reused = sorted(set(pairs) & {tuple(p) for p in candidates.pairs})
        if reused:
            raise ValueError(f"confirming pairs must be new: {reused[0]} was one of the calibration's pairs")
    if not order:
        raise ValueError("no candidate to confirm: the calibration found none within its floor")
    steps = checked_steps(num_inference_steps)
    runner = Runner(
        pipe, small, steps=steps, call=call, scorer=scorer, apply_kwargs=apply_kwargs, tape_bytes=tape_bytes
    )
    for candidate in order:  # each one applies (and is removed) before the first video
        runner.check(candidate)
    say = say or (lambda _: None)
    say(
        f"sr-plugin confirm: up to {len(order)} candidates, fastest first, + large only on {len(pairs)} new pairs; "
        f"floor: {floor.describe()}"
    )
    start = time.perf_counter()
    state = Search(runner, pairs, floor, scorer is not None, say)
    for i in range(len(pairs)):
        state.run_reference(i)
    for i, candidate in enumerate(order):
        holds = state.evaluate(candidate, drop=True)
        say(
            f"[{i + 1}/{len(order)}] {candidate.name}: {'holds' if holds else 'misses'} the floor on the new pairs "
            f"({state.status[candidate.name]})"
        )
        if holds:
            break
    return finished_report(state, [c for c in order if c.name in state.tallies], start)


#: The seeds of confirming pairs made from a calibration's own pairs: each pair's seed plus this.
NEW_SEED_OFFSET = 500_000


def new_seeds(pairs: Sequence[tuple[str, int]], offset: int = NEW_SEED_OFFSET) -> list[tuple[str, int]]:
    """The same prompts with new seeds (each seed plus ``offset``): confirming pairs for a calibration's pairs."""
    return [(prompt, seed + offset) for prompt, seed in pairs]


def _order(candidates: Any, floor: Floor | None, scorer: Any) -> tuple[list[Candidate], Floor]:
    if isinstance(candidates, CalibrationReport):
        chosen = candidates.chosen.name if candidates.chosen is not None else None
        held = sorted(
            (r for r in candidates.rows[1:] if r.within_floor), key=lambda r: (r.name != chosen, -r.modelled_speedup)
        )
        # a fastest-first search never ran the candidates slower than its answer: they come next, fastest first
        untried = sorted(
            (r for r in candidates.rows[1:] if r.status == "not needed"), key=lambda r: -r.modelled_speedup
        )
        order = [Candidate(r.schedule, r.accel) for r in held + untried]
        floor = floor if floor is not None else candidates.floor
    else:
        order = checked_candidates(candidates, ())
    return order, checked_floor(floor, scorer)
