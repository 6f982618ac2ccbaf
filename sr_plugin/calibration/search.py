"""`sr_plugin.calibrate`: the fastest cooperation whose quality stays within a stated floor of large only.

Every candidate (`candidates.Candidate`: a schedule and the accelerations stacked on it) runs on every (prompt,
seed) pair; large only runs first on the same pairs (the reference) and small only beside it. Quality is judged
against large only pair by pair: with a ``scorer`` (a judge: video, prompt -> right or wrong), accuracy and the
paired counts (lost / gained, McNemar's exact test); always, the PSNR and SSIM of the decoded frames against large
only's (scikit-image). Speed is modelled from what each kind of step costs on this machine (`costs.StepCosts`),
fitted on all the runs; the measured loop times are reported beside it. The answer is the candidate with the
largest modelled speed-up among those that hold the floor, or none (the report then names the closest); it is
never a setting that was not run.

Search cost: ``(len(candidates) + 2) x len(pairs)`` videos (the two references: large only and small only).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..accel import accelerate
from ..pipeline.timing import StepClock, timed_run
from ..switch.api import apply
from .fidelity import fidelity
from ..switch.schedule import Schedule
from .candidates import Candidate, candidate_grid
from .costs import StepCosts
from .report import CalibrationReport, CandidateResult
from .stats import Floor, paired

#: Tolerance of the default floor with a scorer: points of accuracy below large only.
DEFAULT_POINTS = 3.0
#: Default floor without a scorer: mean SSIM against large only.
DEFAULT_MIN_SSIM = 0.9


def _pairs(prompts: Sequence[Any], seed: int) -> list[tuple[str, int]]:
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of prompts or of (prompt, seed) pairs")
    out = []
    for i, item in enumerate(prompts):
        if isinstance(item, str):
            out.append((item, seed + i))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) \
                and isinstance(item[1], int) and not isinstance(item[1], bool):
            out.append((item[0], int(item[1])))
        else:
            raise ValueError(f"prompt {i + 1} must be a string or a (prompt, seed) pair, got {item!r}")
    return out


def _candidates(candidates: Any, accelerations: Sequence[Mapping[str, Any]]) -> list[Candidate]:
    if isinstance(candidates, str):
        return candidate_grid(candidates, accelerations)
    if isinstance(candidates, (list, tuple)) and candidates:
        out = [c if isinstance(c, Candidate) else Candidate(c) for c in candidates]
        names = [c.name for c in out]
        if len(set(names)) != len(names):
            raise ValueError(f"a candidate is given twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
        return out
    raise TypeError("candidates must be a grid name ('cheap' or 'full') or a non-empty list of schedules / Candidates")


class _Runs:
    """The videos, scores and step timings of one set-up over the pairs."""

    def __init__(self) -> None:
        self.videos: list[np.ndarray] = []
        self.loop_s: list[float] = []
        self.right: list[bool] = []
        self.calls: list[list[tuple[Any, float]]] = []
        self.roles: list[list[str]] = []


def calibrate(pipe: Any, small: Any, prompts: Sequence[Any], *, floor: Floor | None = None,
              scorer: Callable[[np.ndarray, str], bool] | None = None, candidates: Any = "cheap",
              accelerations: Sequence[Mapping[str, Any]] = ({},), num_inference_steps: int = 50, seed: int = 0,
              apply_kwargs: Mapping[str, Any] | None = None, say: Callable[[str], Any] | None = print,
              **call: Any) -> CalibrationReport:
    """Find the fastest cooperation of ``pipe``'s transformer (large) and ``small`` within ``floor`` of large only.

    Args:
        prompts: prompts (seeds ``seed``, ``seed + 1``, ...) or ``(prompt, seed)`` pairs, the same for every run.
        floor: `Floor` (default: 3 points of accuracy with a scorer, else a mean SSIM of 0.9 against large only).
        scorer: ``scorer(video, prompt) -> bool``, a judge of one video ([frames, H, W, 3] in [0, 1]).
        candidates: "cheap" or "full" (`candidates.GRIDS`, with small only), or a list of schedules / `Candidate`s.
        accelerations: `accelerate` set-ups each grid schedule is also tried with (``{}``: none), e.g.
            ``[{}, {"teacache": 0.1}]``.
        apply_kwargs: further arguments of every `apply` (CogVideoX: the small model's latent scale and schedule).
        call: the pipeline's call arguments (sizes, guidance scale, ...).

    Every candidate is checked (applied and removed) before the first video. Returns a `CalibrationReport`.
    """
    floor, pairs, chosen = _check(pipe, small, prompts, floor, scorer, candidates, accelerations, num_inference_steps,
                                  seed, apply_kwargs or {})
    apply_kwargs = dict(apply_kwargs or {})
    steps = num_inference_steps
    say = say or (lambda _: None)
    total = (len(chosen) + 2) * len(pairs)
    say(f"sr-plugin calibrate: {len(chosen)} candidates + large only + small only on {len(pairs)} pairs, "
        f"{steps} steps: {total} videos; floor: {floor.describe()}")
    start = time.perf_counter()
    clock = StepClock().install(pipe)
    try:
        _run(pipe, pairs, steps, call, scorer)  # one-off first-call costs, untimed
        clock.calls.clear()
        reference = _measure(pipe, small, Candidate(None), pairs, steps, call, scorer, apply_kwargs, clock)
        small_only = _measure(pipe, small, Candidate("small"), pairs, steps, call, scorer, apply_kwargs, clock)
        large_s, small_s = statistics.mean(reference.loop_s), statistics.mean(small_only.loop_s)
        rest = sum(_estimate(c, steps, large_s, small_s) for c in chosen) * len(pairs)
        say(f"large only: {_accuracy(reference.right)}{large_s:.2f} s a video; small only: {small_s:.2f} s; the "
            f"rest: about {_minutes(rest)}")
        measured: dict[str, _Runs] = {"large": reference}
        for i, candidate in enumerate(chosen):
            runs = small_only if candidate == Candidate("small") and not candidate.accel else \
                _measure(pipe, small, candidate, pairs, steps, call, scorer, apply_kwargs, clock)
            measured[candidate.name] = runs
            note = _accuracy(runs.right, reference.right)
            say(f"[{i + 1}/{len(chosen)}] {candidate.name}: {note}{statistics.mean(runs.loop_s):.2f} s a video")
    finally:
        clock.remove()
    costs = StepCosts([c for runs in measured.values() for c in runs.calls])
    rows = [_result(Candidate(None), reference, reference, costs, floor, scorer is not None)]
    rows += [_result(c, measured[c.name], reference, costs, floor, scorer is not None) for c in chosen]
    return CalibrationReport.build(rows, floor, pairs, steps, total, time.perf_counter() - start, costs)


def _check(pipe: Any, small: Any, prompts: Sequence[Any], floor: Floor | None, scorer: Any, candidates: Any,
           accelerations: Sequence[Mapping[str, Any]], steps: Any, seed: int,
           apply_kwargs: Mapping[str, Any]) -> tuple[Floor, list[tuple[str, int]], list[Candidate]]:
    """Every input checked before the first video (each candidate applied and removed once); the floor, the pairs
    and the candidates."""
    floor = _checked_floor(floor, scorer)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {steps!r}")
    pairs = _pairs(prompts, seed)
    chosen = _candidates(candidates, accelerations)
    for candidate in chosen:
        if candidate.schedule is not None and Schedule.parse(candidate.schedule).adaptive is None:
            _estimate(candidate, steps, 1.0, 1.0)  # its ends fit the step count
        sr, acc = _set_up(pipe, small, candidate, apply_kwargs)
        _take_down(sr, acc)
    return floor, pairs, chosen


def _checked_floor(floor: Floor | None, scorer: Any) -> Floor:
    """The floor given, or the default (points of accuracy with a scorer, else SSIM), checked against the scorer."""
    floor = floor if floor is not None else (Floor(points=DEFAULT_POINTS) if scorer is not None
                                             else Floor(min_ssim=DEFAULT_MIN_SSIM))
    if not isinstance(floor, Floor):
        raise TypeError(f"floor must be a sr_plugin.calibration.Floor, got {type(floor).__name__}")
    if floor.needs_scorer and scorer is None:
        raise ValueError("a floor in points of accuracy needs a scorer (a judge of each video); without one, give "
                         "Floor(min_ssim=...) or Floor(min_psnr=...)")
    return floor


def _set_up(pipe: Any, small: Any, candidate: Candidate, apply_kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    sr = apply(pipe, small, schedule=candidate.schedule, **apply_kwargs) if candidate.schedule is not None else None
    try:
        acc = accelerate(pipe, **candidate.accel) if candidate.accel else None
    except BaseException:
        if sr is not None:
            sr.remove()
        raise
    return sr, acc


def _take_down(sr: Any, acc: Any) -> None:
    if acc is not None:
        acc.remove()
    if sr is not None:
        sr.remove()


def _run(pipe: Any, pairs: list[tuple[str, int]], steps: int, call: Mapping[str, Any], scorer: Any) -> None:
    prompt, seed = pairs[0]
    timed_run(pipe, prompt, seed, steps, **call)


def _measure(pipe: Any, small: Any, candidate: Candidate, pairs: list[tuple[str, int]], steps: int,
             call: Mapping[str, Any], scorer: Any, apply_kwargs: Mapping[str, Any], clock: StepClock) -> _Runs:
    runs = _Runs()
    sr, acc = _set_up(pipe, small, candidate, apply_kwargs)
    try:
        if candidate.accel.get("compile"):  # the first compiled call compiles: keep it out of the timings
            _run(pipe, pairs, steps, call, scorer)
            clock.calls.pop()
        for prompt, seed in pairs:
            video, loop_s, _ = timed_run(pipe, prompt, seed, steps, **call)
            runs.videos.append(video)
            runs.loop_s.append(loop_s)
            runs.calls.append(clock.calls[-1])
            runs.roles.append([record.model for record, _ in clock.calls[-1]])
            if scorer is not None:
                runs.right.append(bool(scorer(video, prompt)))
    finally:
        _take_down(sr, acc)
    return runs


def _result(candidate: Candidate, runs: _Runs, reference: _Runs, costs: StepCosts, floor: Floor,
            scored: bool) -> CandidateResult:
    is_reference = runs is reference
    compared = paired(reference.right, runs.right) if scored else None
    fid = [] if is_reference else [fidelity(v, r) for v, r in zip(runs.videos, reference.videos)]
    psnr = statistics.mean(min(p, 100.0) for p, _ in fid) if fid else None
    ssim = statistics.mean(s for _, s in fid) if fid else None
    large_step = costs.plain("large")
    large_time = sum(large_step * len(c) for c in reference.calls)
    modelled = large_time / sum(costs.time(c) for c in runs.calls)
    measured = sum(reference.loop_s) / sum(runs.loop_s)
    small_share = statistics.mean(r.count("small") / len(r) for r in runs.roles) if runs.roles else 0.0
    return CandidateResult(
        name=candidate.name, order=candidate.order, schedule=candidate.schedule, accel=dict(candidate.accel),
        accuracy=100.0 * sum(runs.right) / len(runs.right) if scored else None,
        lost=compared.lost if compared else None, gained=compared.gained if compared else None,
        points=compared.points if compared else None, p_value=compared.p_value if compared else None,
        psnr=psnr, ssim=ssim, modelled_speedup=modelled, measured_speedup=measured, small_share=small_share,
        within_floor=is_reference or floor.holds(compared, ssim, psnr),
        shortfall=0.0 if is_reference else floor.shortfall(compared, ssim, psnr),
        right=list(runs.right))


def _estimate(candidate: Candidate, steps: int, large_s: float, small_s: float) -> float:
    """A candidate's seconds per video before it runs: its schedule's steps at the references' step times (an
    adaptive end halfway; accelerations not counted, so an upper bound for them)."""
    from ..switch.schedule import roles_of

    if candidate.schedule is None:
        return large_s
    schedule = Schedule.parse(candidate.schedule)
    if schedule.adaptive is not None:
        return (large_s + small_s) / 2
    roles = roles_of(schedule, steps)
    return (roles.count("large") * large_s + roles.count("small") * small_s) / steps


def _accuracy(right: list[bool], reference: list[bool] | None = None) -> str:
    if not right:
        return ""
    text = f"{sum(right)} of {len(right)} right"
    if reference is not None:
        p = paired(reference, right)
        text += f" (lost {p.lost}, gained {p.gained})"
    return text + ", "


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} minutes" if seconds >= 90 else f"{seconds:.0f} s"
