"""`sr_plugin.calibrate`: the fastest cooperation whose quality stays within a stated floor of large only.

Each candidate (`candidates.Candidate`: a schedule and the accelerations stacked on it) is judged against large only
on the same (prompt, seed) pairs: with a ``scorer`` (a judge: video, prompt -> right or wrong), accuracy and the
paired counts (lost / gained, McNemar's exact test); always, the PSNR and SSIM of the decoded frames against large
only's (scikit-image). Speed is modelled from what each kind of step costs on this machine (`StepCosts`, fitted on
the computed steps of every run); the answer is the candidate with the largest modelled speed-up among those that
hold the floor (within 1% of it, the better quality), or none (the report then names the closest). It is never a
setting that was not run on every pair.

Two searches, one answer:

- ``search="fastest"`` (the default): large only runs on every pair first; the candidates are tried in order of
  modelled speed-up (from their steps' roles and the measured step costs; a candidate whose speed depends on the
  content, an adaptive end or a cache, is placed by its speed on the first pair), each pair by pair and dropped as
  soon as it can no longer hold the floor; the first that holds on every pair is the answer (with the candidates
  within 1% of its speed, which the tie rule may prefer), and no slower candidate runs.
- ``search="grid"``: every candidate on every pair, the whole table.

Both replay the steps a run shares with an earlier run of the same pair instead of computing them again
(`tape`): exact, bit for bit. The cost is printed before the first video and the time left as it goes; with
``save_to`` the report is written after every candidate's pair, and ``resume=`` continues from such a report.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..pipeline.costs import StepCosts, call_time
from .candidates import Candidate, candidate_grid
from .report import SPEED_TIE, CalibrationReport, CandidateResult, Cost
from .runner import PairRun, Runner, known_roles
from .stats import Floor, paired
from .tape import DEFAULT_TAPE_BYTES, common_prefix, segment_start, stateful

#: Tolerance of the default floor with a scorer: points of accuracy below large only.
DEFAULT_POINTS = 3.0
#: Default floor without a scorer: mean SSIM against large only.
DEFAULT_MIN_SSIM = 0.9
SEARCHES = ("fastest", "grid")


# ---------------------------------------------------------------------------------------------- the inputs
def checked_pairs(prompts: Sequence[Any], seed: int) -> list[tuple[str, int]]:
    """(prompt, seed) pairs from prompts (seeds ``seed``, ``seed + 1``, ...) or pairs."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of prompts or of (prompt, seed) pairs")
    out = []
    for i, item in enumerate(prompts):
        if isinstance(item, str):
            out.append((item, seed + i))
        elif (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int)
            and not isinstance(item[1], bool)
        ):
            out.append((item[0], int(item[1])))
        else:
            raise ValueError(f"prompt {i + 1} must be a string or a (prompt, seed) pair, got {item!r}")
    return out


def checked_candidates(candidates: Any, accelerations: Sequence[Mapping[str, Any]]) -> list[Candidate]:
    if isinstance(candidates, str):
        return candidate_grid(candidates, accelerations)
    if isinstance(candidates, (list, tuple)) and candidates:
        out = [c if isinstance(c, Candidate) else Candidate(c) for c in candidates]
        names = [c.name for c in out]
        if len(set(names)) != len(names):
            raise ValueError(f"a candidate is given twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
        return out
    raise TypeError("candidates must be a grid name ('cheap' or 'full') or a non-empty list of schedules / Candidates")


def checked_floor(floor: Floor | None, scorer: Any) -> Floor:
    """The floor given, or the default (points of accuracy with a scorer, else SSIM), checked against the scorer."""
    if scorer is not None and not callable(scorer):
        raise TypeError(
            f"scorer must be a function scorer(video, prompt) -> bool (True: the video is right), got "
            f"{type(scorer).__name__} {scorer!r}"
        )
    floor = (
        floor
        if floor is not None
        else (Floor(points=DEFAULT_POINTS) if scorer is not None else Floor(min_ssim=DEFAULT_MIN_SSIM))
    )
    if not isinstance(floor, Floor):
        raise TypeError(f"floor must be a sr_plugin.calibration.Floor, got {type(floor).__name__}")
    if floor.needs_scorer and scorer is None:
        raise ValueError(
            "a floor in points of accuracy needs a scorer (a judge of each video); without one, give "
            "Floor(min_ssim=...) or Floor(min_psnr=...)"
        )
    return floor


def checked_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {steps!r}")
    return steps


def checked_step_times(step_times: Any) -> dict[str, float] | None:
    """``{"large": s, "small": s}`` seconds per step, or None (measured here)."""
    if step_times is None:
        return None
    if isinstance(step_times, Mapping):
        step_times = (step_times.get("large"), step_times.get("small"))
    try:
        large, small = (float(v) for v in step_times)
    except (TypeError, ValueError):
        raise ValueError(f"step_times must be (large seconds, small seconds) per step, got {step_times!r}") from None
    if not (large > 0 and small > 0):
        raise ValueError(f"step_times must be positive seconds per step, got {step_times!r}")
    return {"large": large, "small": small}


# ---------------------------------------------------------------------------------------------- progress
@dataclass
class Tally:
    """A candidate's results so far, pair by pair."""

    candidate: Candidate
    runs: dict[int, PairRun]

    def compared(self, reference: dict[int, PairRun], indices: Sequence[int]) -> Any:
        return paired([bool(reference[i].right) for i in indices], [bool(self.runs[i].right) for i in indices])

    def can_hold(self, floor: Floor, reference: dict[int, PairRun], n: int, scored: bool) -> bool:
        """Whether the floor can still hold on all ``n`` pairs, whatever the pairs not yet run give (at best: right
        wherever large only is wrong, no loss, identical frames)."""
        done = sorted(self.runs)
        rest = [i for i in range(n) if i not in self.runs]
        compared = None
        if scored:
            best_right = [bool(self.runs[i].right) if i in self.runs else True for i in range(n)]
            compared = paired([bool(reference[i].right) if i in reference else False for i in range(n)], best_right)
        ssim = (sum(self.runs[i].ssim or 0.0 for i in done) + len(rest)) / n
        psnr = (sum(self.runs[i].psnr or 0.0 for i in done) + 100.0 * len(rest)) / n
        return floor.holds(compared, ssim, psnr)


def modelled_speedup(
    candidate: Candidate, costs: StepCosts, step_times: dict[str, float] | None, steps: int, first: PairRun | None
) -> float:
    """A candidate's speed-up before it has run everywhere: from its roles and the step costs, or (an adaptive
    end, a cache) from its run on the first pair."""
    roles = known_roles(candidate, steps)
    plain = step_times or plain_costs(costs)
    if roles is not None and not stateful(candidate.accel) and all(plain.get(r) for r in set(roles)):
        return steps * plain["large"] / call_time(roles, plain)
    if first is None:
        raise ValueError(f"candidate {candidate.name!r} needs a run to place it")
    if step_times is not None and not stateful(candidate.accel):
        return steps * step_times["large"] / call_time(first.roles, step_times)
    return costs.speedup([r for r, _ in first.steps])


def plain_costs(costs: StepCosts) -> dict[str, float]:
    """Seconds per plain step of each model (the references and the small-model probe time both)."""
    out = {}
    for role in ("large", "small"):
        seconds = costs.plain(role)
        if seconds is None:
            raise RuntimeError(f"no plain {role}-model step was timed: the step costs cannot be modelled")
        out[role] = seconds
    return out


def plan_text(
    candidates: Sequence[Candidate], pairs: int, steps: int, step_times: Mapping[str, float], replay: bool
) -> str:
    """What the search may cost, before it starts: model steps and time at the worst (every candidate on every
    pair) and as expected (if the candidates that miss the floor are dropped after a quarter of the pairs on
    average and the answer is halfway down the list), with the prefix replay counted."""
    worst = {"large": steps * pairs, "small": 0}  # large only on every pair
    tapes: list[list[str]] = [["large"] * steps]
    per_candidate = []
    for candidate in candidates:
        roles = known_roles(candidate, steps)
        if roles is None:  # an adaptive end: its large prefix replayed at best, up to its earliest hand-off
            computed = {"large": steps // 2, "small": steps - steps // 2}
        else:
            skip = max((common_prefix(t, roles) for t in tapes), default=0) if replay else 0
            if stateful(candidate.accel):
                skip = 0 if not replay else segment_start(roles, skip) if skip < steps else skip
            computed = {"large": roles[skip:].count("large"), "small": roles[skip:].count("small")}
            tapes.append(roles)
        per_candidate.append(computed)
    for computed in per_candidate:
        for role in worst:
            worst[role] += computed[role] * pairs
    half = per_candidate[: max(1, len(per_candidate) // 2)]
    expected = {"large": steps * pairs, "small": 0}
    for i, computed in enumerate(half):
        share = pairs if i == len(half) - 1 else max(1, pairs // 4)
        for role in expected:
            expected[role] += computed[role] * share

    def seconds(count: Mapping[str, int]) -> float:
        return sum(count[r] * step_times[r] for r in count)

    return (
        f"at most {worst['large']:,} large and {worst['small']:,} small model steps ({_duration(seconds(worst))});"
        f" expected about {expected['large']:,} and {expected['small']:,} ({_duration(seconds(expected))})"
    )


def _duration(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.0f} minutes" if seconds >= 90 else f"{seconds:.0f} s"


# ---------------------------------------------------------------------------------------------- the search
class Search:
    """One calibration's state: the runner, every result so far (saved after each and loaded back on a resume)."""

    def __init__(
        self,
        runner: Runner,
        pairs: list[tuple[str, int]],
        floor: Floor,
        scored: bool,
        say: Callable[[str], Any],
        save_to: Any = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.runner = runner
        self.pairs = pairs
        self.floor = floor
        self.scored = scored
        self.say = say
        self.save_to = pathlib.Path(save_to) if save_to is not None else None
        self.settings = dict(settings or {})
        self.reference: dict[int, PairRun] = {}
        self.tallies: dict[str, Tally] = {}
        #: Why each candidate stopped: "held", "dropped after k pairs", "missed the floor", "not needed".
        self.status: dict[str, str] = {}
        #: Each candidate's modelled speed-up as the search placed it (before it ran on every pair).
        self.speed: dict[str, float] = {}

    # ------------------------------------------------------------------ resume and save
    def load(self, path: Any, candidates: Sequence[Candidate]) -> None:
        data = json.loads(pathlib.Path(path).read_text())
        saved = data.get("progress")
        if not isinstance(saved, dict):
            raise ValueError(f"{path} is not a calibration report with progress to resume")
        pairs = [tuple(p) for p in saved["pairs"]]
        if pairs != [tuple(p) for p in self.pairs]:
            raise ValueError(f"resume={str(path)!r}: the report was made on other (prompt, seed) pairs")
        for key, value in self.settings.items():
            if saved["settings"].get(key) != value:
                raise ValueError(
                    f"resume={str(path)!r}: the report was made with {key}={saved['settings'].get(key)!r}"
                    f", not {value!r}"
                )
        by_name = {c.name: c for c in candidates}
        self.reference = {int(i): PairRun.from_dict(r) for i, r in saved["reference"].items()}
        for name, runs in saved["candidates"].items():
            if name in by_name:
                self.tallies[name] = Tally(by_name[name], {int(i): PairRun.from_dict(r) for i, r in runs.items()})
        for i, run in self.reference.items():
            self.runner.references[self.pairs[i]] = run
        self.runner.add_timed([*self.reference.values(), *(r for t in self.tallies.values() for r in t.runs.values())])
        done = sum(len(t.runs) for t in self.tallies.values())
        self.say(f"resumed from {path}: large only on {len(self.reference)} pairs, {done} candidate runs")

    def progress(self) -> dict[str, Any]:
        return {
            "pairs": [list(p) for p in self.pairs],
            "settings": self.settings,
            "reference": {str(i): r.as_dict() for i, r in self.reference.items()},
            "candidates": {n: {str(i): r.as_dict() for i, r in t.runs.items()} for n, t in self.tallies.items()},
        }

    def save(self) -> None:
        if self.save_to is None:
            return
        partial = self.save_to.with_suffix(".partial")
        partial.write_text(json.dumps({"progress": self.progress()}, indent=1, default=float) + "\n")
        partial.replace(self.save_to)

    # ------------------------------------------------------------------ runs
    def run_reference(self, i: int) -> PairRun:
        if i not in self.reference:
            self.reference[i] = self.runner.reference(self.pairs[i])
            self.save()
        return self.reference[i]

    def run(self, candidate: Candidate, i: int) -> PairRun:
        tally = self.tallies.setdefault(candidate.name, Tally(candidate, {}))
        if i not in tally.runs:
            self.run_reference(i)
            tally.runs[i] = self.runner.run(candidate, self.pairs[i])
            self.save()
        return tally.runs[i]

    def evaluate(self, candidate: Candidate, drop: bool) -> bool:
        """The candidate on every pair, in order (dropped, with ``drop``, once it cannot hold the floor); whether it
        holds the floor on every pair."""
        n = len(self.pairs)
        for i in range(n):
            self.run(candidate, i)
            tally = self.tallies[candidate.name]
            if drop and not tally.can_hold(self.floor, self.reference, n, self.scored):
                self.status[candidate.name] = f"dropped after {len(tally.runs)} pairs"
                return False
        holds = self.row(candidate).within_floor
        self.status[candidate.name] = "held" if holds else "missed the floor"
        return holds

    # ------------------------------------------------------------------ results
    def row(self, candidate: Candidate | None, costs: StepCosts | None = None) -> CandidateResult:
        """The candidate's (None: large only's) row, on the pairs it ran."""
        costs = costs or self.runner.costs()
        is_reference = candidate is None
        candidate = candidate or Candidate(None)
        runs = self.reference if is_reference else self.tallies.get(candidate.name, Tally(candidate, {})).runs
        indices = sorted(runs)
        complete = len(indices) == len(self.pairs)
        compared = (
            self.tallies[candidate.name].compared(self.reference, indices)
            if self.scored and not is_reference and indices
            else None
        )
        psnr = statistics.mean(runs[i].psnr or 0.0 for i in indices) if indices and not is_reference else None
        ssim = statistics.mean(runs[i].ssim or 0.0 for i in indices) if indices and not is_reference else None
        calls = [[r for r, _ in runs[i].steps] for i in indices]
        modelled = (
            sum(len(c) for c in calls) / sum(len(c) / costs.speedup(c) for c in calls)
            if calls
            else self.speed.get(candidate.name, 0.0)
        )
        reference_s = sum(self.reference[i].seconds for i in indices if i in self.reference)
        measured = reference_s / sum(runs[i].seconds for i in indices) if indices and reference_s else 0.0
        right = [bool(runs[i].right) for i in indices]
        within = is_reference or (complete and self.floor.holds(compared, ssim, psnr))
        return CandidateResult(
            name=candidate.name,
            order=candidate.order,
            schedule=candidate.schedule,
            accel=dict(candidate.accel),
            accuracy=100.0 * sum(right) / len(right) if self.scored and right else None,
            lost=compared.lost if compared else None,
            gained=compared.gained if compared else None,
            points=compared.points if compared else None,
            p_value=compared.p_value if compared else None,
            psnr=psnr,
            ssim=ssim,
            modelled_speedup=modelled,
            measured_speedup=measured,
            small_share=statistics.mean(runs[i].roles.count("small") / len(runs[i].roles) for i in indices)
            if indices
            else 0.0,
            within_floor=within,
            shortfall=0.0
            if is_reference
            else (self.floor.shortfall(compared, ssim, psnr) if indices else float("inf")),
            right=right,
            pairs_run=len(indices),
            status="reference" if is_reference else self.status.get(candidate.name, "not needed"),
        )


def calibrate(
    pipe: Any,
    small: Any,
    prompts: Sequence[Any],
    *,
    floor: Floor | None = None,
    scorer: Callable[[np.ndarray, str], bool] | None = None,
    candidates: Any = "cheap",
    accelerations: Sequence[Mapping[str, Any]] = ({},),
    num_inference_steps: int = 50,
    seed: int = 0,
    apply_kwargs: Mapping[str, Any] | None = None,
    search: str = "fastest",
    step_times: Any = None,
    save_to: Any = None,
    resume: Any = None,
    tape_bytes: int = DEFAULT_TAPE_BYTES,
    tape_folder: Any = None,
    replay: bool = True,
    say: Callable[[str], Any] | None = print,
    **call: Any,
) -> CalibrationReport:
    """Find the fastest cooperation of ``pipe``'s transformer (large) and ``small`` within ``floor`` of large only.

    Args:
        prompts: prompts (seeds ``seed``, ``seed + 1``, ...) or ``(prompt, seed)`` pairs, the same for every run.
        floor: `Floor` (default: 3 points of accuracy with a scorer, else a mean SSIM of 0.9 against large only).
        scorer: ``scorer(video, prompt) -> bool``, a judge of one video ([frames, H, W, 3] in [0, 1]).
        candidates: "cheap" or "full" (`candidates.GRIDS`, with small only), or a list of schedules / `Candidate`s.
        accelerations: `accelerate` set-ups each grid schedule is also tried with (``{}``: none), e.g.
            ``[{}, {"teacache": 0.1}]``.
        apply_kwargs: further arguments of every `apply` (CogVideoX: the small model's latent scale and schedule).
        search: "fastest" (fastest first, early drops) or "grid" (every candidate on every pair).
        step_times: seconds per large and per small step, ``(large, small)`` or a dict, for the cost printed
            before the first video and the order of the candidates (default: measured on the first pair).
        save_to: a JSON file written after every candidate's pair (and with the final report); ``resume``: such a
            file, to continue a calibration that was cut off from the pairs it finished.
        tape_bytes / tape_folder / replay: the prefix replay's budget of recorded step outputs (host memory, or a
            folder), or ``replay=False`` to compute every step.
        call: the pipeline's call arguments (sizes, guidance scale, ...).

    Every input is checked (each candidate applied and removed) before the first video. Returns a
    `CalibrationReport`.
    """
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    floor = checked_floor(floor, scorer)
    steps = checked_steps(num_inference_steps)
    pairs = checked_pairs(prompts, seed)
    chosen = checked_candidates(candidates, accelerations)
    times = checked_step_times(step_times)
    if resume is not None and not pathlib.Path(resume).is_file():
        raise ValueError(f"resume={str(resume)!r}: there is no such report")
    runner = Runner(
        pipe,
        small,
        steps=steps,
        call=call,
        scorer=scorer,
        apply_kwargs=apply_kwargs,
        tape_bytes=tape_bytes,
        tape_folder=tape_folder,
        replay=replay,
    )
    for candidate in chosen:
        runner.check(candidate)
    say = say or (lambda _: None)
    settings = {"steps": steps, "floor": floor.describe(), "search": search}
    state = Search(runner, pairs, floor, scorer is not None, say, save_to, settings)
    if resume is not None:
        state.load(resume, chosen)
    say(
        f"sr-plugin calibrate: {len(chosen)} candidates on {len(pairs)} pairs, {steps} steps, {search} search; "
        f"floor: {floor.describe()}"
    )
    start = time.perf_counter()
    if times is not None:
        say("cost: " + plan_text(chosen, len(pairs), steps, times, replay))
    order = _order(state, chosen, times, steps, say)
    if search == "grid":
        for i, candidate in enumerate(order):
            state.evaluate(candidate, drop=False)
            _progress(state, i, order, start)
    else:
        _fastest_first(state, order, start)
    report = finished_report(state, chosen, start)
    if save_to is not None:
        report.to_json(save_to)
    return report


def _order(
    state: Search, chosen: list[Candidate], times: dict[str, float] | None, steps: int, say: Callable[[str], Any]
) -> list[Candidate]:
    """Large only on every pair, then the candidates in order of modelled speed-up (fastest first)."""
    for i in range(len(state.pairs)):
        state.run_reference(i)
    needs_run = [c for c in chosen if known_roles(c, steps) is None or stateful(c.accel)]
    small_only = next((c for c in chosen if c.schedule == "small" and not c.accel), Candidate("small"))
    if times is None:
        if small_only in chosen:
            state.run(small_only, 0)
        else:  # a probe for the small model's step cost
            state.runner.run(small_only, state.pairs[0])
    for candidate in needs_run:
        state.run(candidate, 0)
    costs = state.runner.costs()
    if times is None:
        plain = plain_costs(costs)
        say(
            f"step costs here: large {plain['large']:.3g} s, small {plain['small']:.3g} s; cost: "
            + plan_text(chosen, len(state.pairs), steps, plain, state.runner.store is not None)
        )
    speed = {
        c.name: modelled_speedup(c, costs, times, steps, state.tallies.get(c.name, Tally(c, {})).runs.get(0))
        for c in chosen
    }
    state.speed.update(speed)
    return sorted(chosen, key=lambda c: -speed[c.name])


def _fastest_first(state: Search, order: list[Candidate], start: float) -> None:
    answer = None
    for i, candidate in enumerate(order):
        if answer is not None and state.speed[candidate.name] < state.speed[answer.name] * (1 - SPEED_TIE):
            break
        holds = state.evaluate(candidate, drop=True)
        _progress(state, i, order, start)
        if holds and answer is None:
            answer = candidate


def _progress(state: Search, i: int, order: list[Candidate], start: float) -> None:
    candidate = order[i]
    tally = state.tallies[candidate.name]
    runner = state.runner
    right = [bool(r.right) for r in tally.runs.values()] if state.scored else []
    score = f"{sum(right)} of {len(right)} right, " if right else ""
    elapsed = time.perf_counter() - start
    state.say(
        f"[{i + 1}/{len(order)}] {candidate.name}: {state.status.get(candidate.name, '')} ({score}"
        f"{state.speed[candidate.name]:.2f}x modelled); so far {runner.computed['large']:,} large and "
        f"{runner.computed['small']:,} small steps computed, {sum(runner.replayed.values()):,} replayed, "
        f"{_duration(elapsed)}; at most {_duration(elapsed / (i + 1) * (len(order) - i - 1))} left"
    )


def finished_report(state: Search, chosen: list[Candidate], start: float) -> CalibrationReport:
    """The report of a search: large only's row and each candidate's, the choice, the cost."""
    costs = state.runner.costs()
    rows = [state.row(None, costs)] + [state.row(c, costs) for c in chosen]
    runner = state.runner
    cost = Cost(dict(runner.computed), dict(runner.replayed), runner.videos, time.perf_counter() - start)
    report = CalibrationReport.build(
        rows, state.floor, state.pairs, runner.steps, runner.videos, cost.seconds, costs, cost=cost
    )
    report.progress = state.progress()
    return report
