"""One candidate on one (prompt, seed) pair, the way every calibration runs it: `Runner`, the seam the search and
the confirmation share.

A run applies the candidate's schedule and accelerations, replays the longest prefix of steps it shares with an
earlier run (`tape`), times each step (`StepClock`), scores the video (the judge, when there is one) and compares it
with large only's video of the same pair (PSNR, SSIM). The runner counts the model steps it computed and the ones it
replayed, and fits the step-cost model (`StepCosts`) on the computed steps of every run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..accel import accelerate
from ..pipeline.costs import StepCosts
from ..pipeline.timing import StepClock, timed_run
from ..pipeline.trace import StepRecord
from ..switch.api import apply
from ..switch.schedule import Schedule, roles_of
from .candidates import Candidate
from .fidelity import fidelity
from .tape import DEFAULT_TAPE_BYTES, Replay, Tape, TapeStore, accel_key

#: PSNR of two identical videos is infinite; a pair counts this much at most in a mean.
PSNR_CAP = 100.0


@dataclass
class PairRun:
    """A candidate on one pair: its steps (record and seconds; a replayed step has its source's), the video (None
    once loaded back from a saved report), whether the judge found it right, and its fidelity to large only."""

    pair: tuple[str, int]
    steps: list[tuple[StepRecord, float]]
    right: bool | None = None
    psnr: float | None = None
    ssim: float | None = None
    replayed: int = 0
    video: np.ndarray | None = field(default=None, repr=False)

    @property
    def roles(self) -> list[str]:
        return [r.model for r, _ in self.steps]

    @property
    def seconds(self) -> float:
        """The denoising loop's time as the sum of its steps' (a replayed step counts its source's time)."""
        return sum(s for _, s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pair": list(self.pair),
            "right": self.right,
            "psnr": self.psnr,
            "ssim": self.ssim,
            "replayed": self.replayed,
            "steps": [[r.as_dict(), s] for r, s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairRun:
        steps = [(StepRecord(**r), float(s)) for r, s in data["steps"]]
        return cls(
            (str(data["pair"][0]), int(data["pair"][1])),
            steps,
            data.get("right"),
            data.get("psnr"),
            data.get("ssim"),
            int(data.get("replayed", 0)),
        )


def known_roles(candidate: Candidate, steps: int) -> list[str] | None:
    """The roles of a candidate's steps before it runs (None: an adaptive end decides them while it runs)."""
    if candidate.schedule is None:
        return ["large"] * steps
    schedule = Schedule.parse(candidate.schedule)
    return None if schedule.adaptive is not None else roles_of(schedule, steps)


class Runner:
    """Runs candidates pair by pair on one pipeline and small model, with the prefix replay, and keeps count."""

    def __init__(
        self,
        pipe: Any,
        small: Any,
        *,
        steps: int,
        call: Mapping[str, Any],
        scorer: Callable[[np.ndarray, str], bool] | None = None,
        apply_kwargs: Mapping[str, Any] | None = None,
        tape_bytes: int = DEFAULT_TAPE_BYTES,
        tape_folder: Any = None,
        replay: bool = True,
    ) -> None:
        self.pipe = pipe
        self.small = small
        self.steps = steps
        self.call = dict(call)
        self.scorer = scorer
        self.apply_kwargs = dict(apply_kwargs or {})
        self.store = TapeStore(tape_bytes, tape_folder) if replay else None
        #: Large only's run of each pair (its video is what fidelity compares with).
        self.references: dict[tuple[str, int], PairRun] = {}
        #: Model steps computed and replayed, by role; videos made.
        self.computed: dict[str, int] = {"large": 0, "small": 0}
        self.replayed: dict[str, int] = {"large": 0, "small": 0}
        self.videos = 0
        #: The (record, seconds) of every computed step of every run: what `costs` is fitted on.
        self._timed: list[list[tuple[StepRecord, float]]] = []
        self._warm = False
        self._compiled: set[str] = set()
        self.started = time.perf_counter()

    # ------------------------------------------------------------------ set-ups
    def set_up(self, candidate: Candidate) -> tuple[Any, Any]:
        """`apply` and `accelerate` as the candidate says; a refusal raises, naming the candidate."""
        try:
            sr = (
                apply(self.pipe, self.small, schedule=candidate.schedule, **self.apply_kwargs)
                if candidate.schedule is not None
                else None
            )
        except (ValueError, TypeError) as err:
            raise type(err)(f"candidate {candidate.name!r}: {err}") from None
        try:
            acc = accelerate(self.pipe, **candidate.accel) if candidate.accel else None
        except BaseException as err:
            if sr is not None:
                sr.remove()
            if isinstance(err, (ValueError, TypeError)):
                raise type(err)(f"candidate {candidate.name!r}: {err}") from None
            raise
        return sr, acc

    @staticmethod
    def take_down(sr: Any, acc: Any) -> None:
        if acc is not None:
            acc.remove()
        if sr is not None:
            sr.remove()

    def check(self, candidate: Candidate) -> None:
        """Applied and removed once, and its ends fitted to the step count: every error before the first video."""
        try:
            known_roles(candidate, self.steps)
        except ValueError as err:
            raise ValueError(f"candidate {candidate.name!r} with num_inference_steps={self.steps}: {err}") from None
        self.take_down(*self.set_up(candidate))

    # ------------------------------------------------------------------ runs
    def warm_up(self, pair: tuple[str, int]) -> None:
        """One untimed call: one-off first-call costs stay out of the step times."""
        if not self._warm:
            timed_run(self.pipe, pair[0], pair[1], self.steps, **self.call)
            self._warm = True

    def reference(self, pair: tuple[str, int]) -> PairRun:
        """Large only on ``pair`` (run once; again after a resume, where only its figures were kept)."""
        run = self.references.get(pair)
        if run is None or run.video is None:
            fresh = self.run(Candidate(None), pair, compare=False)
            if run is not None:
                fresh.steps = run.steps  # the figures the calibration already used
            self.references[pair] = run = fresh
        return run

    def run(self, candidate: Candidate, pair: tuple[str, int], compare: bool = True) -> PairRun:
        """``candidate`` on ``pair``: its video, steps, score and (with ``compare``) fidelity to large only."""
        self.warm_up(pair)
        reference = self.reference(pair) if compare else None
        sr, acc = self.set_up(candidate)
        clock = StepClock().install(self.pipe)
        replay = None
        try:
            if candidate.accel.get("compile") and candidate.name not in self._compiled:
                timed_run(self.pipe, pair[0], pair[1], self.steps, **self.call)  # the compiling call, untimed
                self._compiled.add(candidate.name)
                clock.calls.clear()
            source, length = (
                (None, 0)
                if self.store is None
                else self.store.best(pair, candidate.accel, known_roles(candidate, self.steps), self.steps)
            )
            replay = Replay(self.pipe, source, length).install()
            video, _, _ = timed_run(self.pipe, pair[0], pair[1], self.steps, **self.call)
            # judged while the candidate is applied: a judge may read the switch's report of the call
            right = None if self.scorer is None else bool(self.scorer(video, pair[0]))
        finally:
            if replay is not None:
                replay.remove()
            clock.remove()
            self.take_down(sr, acc)
        timed = clock.calls[-1]
        done = replay.replayed
        steps = ([(source.records[j], source.seconds[j]) for j in range(done)] if source is not None else []) + list(
            timed[done:]
        )
        self._timed.append(list(timed[done:]))
        for j, (record, _) in enumerate(steps):
            (self.replayed if j < done else self.computed)[record.model] += 1
        self.videos += 1
        if self.store is not None:
            self.store.add(
                Tape(
                    pair,
                    accel_key(candidate.accel),
                    [r.model for r, _ in steps],
                    [r for r, _ in steps],
                    [s for _, s in steps],
                    replay.outputs,
                    reference=candidate.schedule in (None, "small") and not candidate.accel,
                )
            )
        run = PairRun(pair, steps, right=right, replayed=done, video=video)
        if reference is not None:
            psnr, ssim = fidelity(video, reference.video)
            run.psnr, run.ssim = min(psnr, PSNR_CAP), ssim
        return run

    def add_timed(self, runs: list[PairRun]) -> None:
        """Step times of runs loaded back from a saved report (their computed steps)."""
        for run in runs:
            self._timed.append(run.steps[run.replayed :])

    # ------------------------------------------------------------------ the cost model
    def costs(self) -> StepCosts:
        """Seconds per kind of step, fitted on every computed step so far."""
        return StepCosts(self._timed)
