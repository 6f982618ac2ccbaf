"""Which delta to pick: sweep the switch (adaptive deltas and fixed steps) on your pipeline and prompts, measure
each setting's speed-up and its fidelity to large only, and pick the setting that meets a target.

A setting's time ratio is what its switch steps cost: ``(k + rho (N - k)) / N`` per prompt, averaged, with
``rho`` (a small step's time over a large one's) fitted once from every paired run of the sweep. Each single
paired measurement on a busy machine is off by several percent; the switch steps are not, and one ``rho`` from
dozens of runs is steady, so the promise holds when the setting is rerun on other prompts (the measured ratio
of each row is kept beside it as ``measured_time_ratio``).

Targets are fractions in (0, 1]: ``min_ssim`` (the mean SSIM against the large-only video that must be kept:
the largest speed-up among the settings that keep it) or ``max_time_ratio`` (SR time / large-only time that
must not be exceeded: the best SSIM among the settings that fit). A target no setting meets is an error that
names the closest setting, never a silent fallback.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..pipeline.costs import mean_time_ratio, one_switch_roles
from ..pipeline.timing import timed_run
from ..switch.api import apply
from .fidelity import fidelity

#: Deltas swept by default: a decade on either side of SRDiffusion's 0.01.
DEFAULT_DELTAS: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)


@dataclass(frozen=True)
class SweepRow:
    """One setting, over the prompt set: time ratio (SR / large-only denoising time, from the switch steps and
    the sweep's fitted step-time ratio), mean PSNR and SSIM against large only, mean switch step, the scorer's
    accuracy if one was given, the measured time ratio (total SR time over total paired large-only time), and
    the standard error of the time ratio over the prompts: an adaptive delta switches at a different step per
    prompt, so another prompt set moves its time by about that much (zero for a fixed switch step)."""

    setting: str
    delta: float | None
    switch_step: int | None
    mean_switch_step: float | None
    time_ratio: float
    psnr: float
    ssim: float
    accuracy: float | None = None
    measured_time_ratio: float | None = None
    time_ratio_se: float | None = None

    @property
    def speedup(self) -> float:
        return 1.0 / self.time_ratio

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup}


def _check_target(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")


def fit_step_ratio(switch_steps: Sequence[int], time_ratios: Sequence[float], num_steps: int) -> float | None:
    """``rho``, a small step's time over a large one's, from paired runs: a run switching at ``k`` of ``N`` takes
    ``(k + rho (N - k)) / N`` of the large-only time, so each run gives ``rho = (ratio N - k) / (N - k)``; the
    median over the runs keeps one disturbed measurement from moving it. None without a run that switched."""
    if len(switch_steps) != len(time_ratios):
        raise ValueError("one time ratio per switch step")
    estimates = [
        (ratio * num_steps - k) / (num_steps - k) for k, ratio in zip(switch_steps, time_ratios) if 0 <= k < num_steps
    ]
    return statistics.median(estimates) if estimates else None


#: Largest spread of the per-run step-ratio estimates (interquartile range over the median) that a quiet
#: machine gives: on the 2-core VM the runs of one sweep agree within about 0.2 of their median.
STEP_RATIO_MAX_SPREAD = 0.5


def step_ratio_doubt(switch_steps: Sequence[int], time_ratios: Sequence[float], num_steps: int) -> str | None:
    """Why the fitted step ratio cannot be trusted (a small step no cheaper than a large one, or none at all, or
    paired runs that disagree more than a quiet machine's do), or None."""
    estimates = sorted(
        (ratio * num_steps - k) / (num_steps - k) for k, ratio in zip(switch_steps, time_ratios) if 0 <= k < num_steps
    )
    if not estimates:
        return None
    rho = statistics.median(estimates)
    if not 0 < rho < 1:
        return f"the fitted small / large step time {rho:.3f} is outside (0, 1), which no pair of models gives"
    if len(estimates) >= 4:
        q1, _, q3 = statistics.quantiles(estimates, n=4)
        if (q3 - q1) / rho > STEP_RATIO_MAX_SPREAD:
            return (
                f"the paired runs disagree: their step-time estimates spread over {q1:.3f}..{q3:.3f} around {rho:.3f}"
            )
    return None


def modelled_time_ratio(switch_steps: Sequence[int], num_steps: int, step_ratio: float) -> float:
    """The time of runs switching at ``switch_steps`` (``num_steps``: never) over as many large-only runs."""
    return mean_time_ratio([one_switch_roles(k, num_steps) for k in switch_steps], {"large": 1.0, "small": step_ratio})


@dataclass
class DeltaCalibration:
    rows: list[SweepRow]
    #: The fitted small-step / large-step time ratio (None for a sweep built by hand).
    step_ratio: float | None = None
    #: Why `step_ratio` cannot be trusted (the machine was busy), or None.
    step_ratio_doubt: str | None = None

    def pick(self, *, min_ssim: float | None = None, max_time_ratio: float | None = None) -> SweepRow:
        """The largest speed-up keeping ``min_ssim``, or the best SSIM within ``max_time_ratio`` (one of them)."""
        if (min_ssim is None) == (max_time_ratio is None):
            raise ValueError("give exactly one target: min_ssim= or max_time_ratio=")
        _check_target("min_ssim", min_ssim)
        _check_target("max_time_ratio", max_time_ratio)
        if not self.rows:
            raise ValueError("the sweep has no settings")
        if min_ssim is not None:
            fits = [r for r in self.rows if r.ssim >= min_ssim]
            if not fits:
                best = max(self.rows, key=lambda r: r.ssim)
                raise ValueError(
                    f"no setting keeps a mean SSIM of {min_ssim} against large only: the best is "
                    f"{best.setting} with {best.ssim:.4f}; lower the target or sweep smaller deltas"
                )
            return max(fits, key=lambda r: (r.speedup, r.ssim))
        assert max_time_ratio is not None
        fits = [r for r in self.rows if r.time_ratio <= max_time_ratio]
        if not fits:
            best = min(self.rows, key=lambda r: r.time_ratio)
            raise ValueError(
                f"no setting runs within {max_time_ratio} of the large-only time: the fastest is "
                f"{best.setting} at {best.time_ratio:.3f}; raise the target or sweep larger deltas"
            )
        return max(fits, key=lambda r: (r.ssim, r.speedup))

    def table(self) -> str:
        lines = [
            "| setting | mean switch step | time ratio | speed-up | measured | PSNR (dB) | SSIM | accuracy |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            k = "-" if r.mean_switch_step is None else f"{r.mean_switch_step:.1f}"
            acc = "-" if r.accuracy is None else f"{r.accuracy:.1f}%"
            measured = "-" if r.measured_time_ratio is None else f"{1 / r.measured_time_ratio:.2f}x"
            se = "" if not r.time_ratio_se else f" ± {r.time_ratio_se:.3f}"
            lines.append(
                f"| {r.setting} | {k} | {r.time_ratio:.3f}{se} | {r.speedup:.2f}x | {measured} | {r.psnr:.2f} | "
                f"{r.ssim:.4f} | {acc} |"
            )
        if self.step_ratio is not None:
            lines.append(
                f"\nfitted small / large step time: {self.step_ratio:.3f} (time ratio = (k + that x (N - k)) / N)"
            )
        return "\n".join(lines)


def _run(pipe: Any, prompt: str, seed: int, steps: int, call: dict[str, Any]) -> tuple[np.ndarray, float]:
    video, denoise, _ = timed_run(pipe, prompt, seed, steps, **call)
    return video, denoise


def sweep_switch(
    pipe: Any,
    small: Any,
    prompts: Sequence[str],
    *,
    deltas: Sequence[float] = DEFAULT_DELTAS,
    switch_steps: Sequence[int] = (),
    num_inference_steps: int = 50,
    seed: int = 0,
    apply_kwargs: dict[str, Any] | None = None,
    scorer: Callable[[np.ndarray, str], bool] | None = None,
    say: Any = None,
    **call_kwargs: Any,
) -> DeltaCalibration:
    """Every delta and fixed switch step on every prompt (seeds ``seed``, ``seed + 1``, ...), each against the
    large-only run of the same prompt and seed (its video for fidelity; for time, a large-only run next to the
    setting's, in paired rounds whose order alternates so that neither side always runs first). ``scorer(video,
    prompt) -> bool`` adds an accuracy column."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    settings: list[tuple[str, Any]] = [("delta", float(d)) for d in deltas]
    settings += [("switch_step", int(k)) for k in switch_steps]
    if not settings:
        raise ValueError("nothing to sweep: give deltas or switch_steps")
    apply_kwargs = dict(apply_kwargs or {})
    for kind, value in settings:  # every setting is checked before any generation
        apply(pipe, small, **{kind: value}, **apply_kwargs).remove()
    n = num_inference_steps
    _run(pipe, prompts[0], seed, n, call_kwargs)  # one-off first-call costs, untimed
    measured = []
    for kind, value in settings:
        times, psnrs, ssims, ks, right = [], [], [], [], []
        for i, prompt in enumerate(prompts):
            runs = {}
            for side in ("large", "sr") if i % 2 == 0 else ("sr", "large"):
                # a fixed switch at or after the last step is the large model alone (it never hands over)
                never = kind == "switch_step" and value >= n
                handle = apply(pipe, small, **{kind: value}, **apply_kwargs) if side == "sr" and not never else None
                try:
                    runs[side] = _run(pipe, prompt, seed + i, n, call_kwargs)
                    if side == "sr":  # the steps the large model ran before the small one took over
                        ks.append(
                            n if handle is None else next((r.index for r in handle.trace if r.model == "small"), n)
                        )
                finally:
                    if handle is not None:
                        handle.remove()
            (video, seconds), (reference_video, reference_seconds) = runs["sr"], runs["large"]
            psnr, ssim = fidelity(video, reference_video)
            times.append((seconds, reference_seconds))
            psnrs.append(min(psnr, 100.0))  # identical videos (never switched) have infinite PSNR
            ssims.append(ssim)
            if scorer is not None:
                right.append(bool(scorer(video, prompt)))
        ratio = sum(t for t, _ in times) / sum(r for _, r in times)
        measured.append((kind, value, ks, times, ratio, psnrs, ssims, right))
        if say is not None:
            say(f"{_name(kind, value)}: mean switch step {statistics.mean(ks):.1f}, measured time ratio {ratio:.3f}")
    step_ratio = fit_step_ratio([k for m in measured for k in m[2]], [t / r for m in measured for t, r in m[3]], n)
    rows = []
    for kind, value, ks, _, ratio, psnrs, ssims, right in measured:
        switched = [k for k in ks if k < n]
        per_prompt = None if step_ratio is None else [modelled_time_ratio([k], n, step_ratio) for k in ks]
        rows.append(
            SweepRow(
                _name(kind, value),
                value if kind == "delta" else None,
                int(value) if kind == "switch_step" else None,
                statistics.mean(switched) if switched else None,
                ratio if per_prompt is None else statistics.mean(per_prompt),
                statistics.mean(psnrs),
                statistics.mean(ssims),
                100.0 * sum(right) / len(right) if right else None,
                ratio,
                None if per_prompt is None else _standard_error(per_prompt),
            )
        )
    doubt = step_ratio_doubt([k for m in measured for k in m[2]], [t / r for m in measured for t, r in m[3]], n)
    return DeltaCalibration(rows, step_ratio, doubt)


def _standard_error(values: Sequence[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def _name(kind: str, value: float) -> str:
    return f"delta={value}" if kind == "delta" else f"k={value}"


@dataclass(frozen=True)
class PromiseCheck:
    """A picked setting rerun on other prompts: the speed-up the calibration promised, the one measured."""

    setting: str
    promised_speedup: float
    measured_speedup: float
    promised_mean_switch_step: float | None
    measured_mean_switch_step: float | None
    #: The promise's standard error as a fraction of it (from the calibration prompts' spread of switch steps).
    promised_relative_se: float | None = None

    @property
    def relative_error(self) -> float:
        return self.measured_speedup / self.promised_speedup - 1.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative_error": self.relative_error}


def check_promise(pipe: Any, small: Any, picked: SweepRow, prompts: Sequence[str], **sweep_kwargs: Any) -> PromiseCheck:
    """Rerun the picked setting on ``prompts`` (disjoint from the calibration's) and measure its speed-up in paired
    rounds, the plain wall-clock way: does the calibration keep its promise?"""
    setting = (
        {"deltas": (picked.delta,), "switch_steps": ()}
        if picked.delta is not None
        else {"deltas": (), "switch_steps": (picked.switch_step,)}
    )
    row = sweep_switch(pipe, small, prompts, **setting, **sweep_kwargs).rows[0]
    assert row.measured_time_ratio is not None
    se = None if picked.time_ratio_se is None else picked.time_ratio_se / picked.time_ratio
    return PromiseCheck(
        picked.setting, picked.speedup, 1.0 / row.measured_time_ratio, picked.mean_switch_step, row.mean_switch_step, se
    )


def calibrate_delta(
    pipe: Any,
    small: Any,
    prompts: Sequence[str],
    *,
    min_ssim: float | None = None,
    max_time_ratio: float | None = None,
    **sweep_kwargs: Any,
) -> tuple[SweepRow, DeltaCalibration]:
    """`sweep_switch`, then `DeltaCalibration.pick`; the targets are checked before any generation."""
    if (min_ssim is None) == (max_time_ratio is None):
        raise ValueError("give exactly one target: min_ssim= or max_time_ratio=")
    _check_target("min_ssim", min_ssim)
    _check_target("max_time_ratio", max_time_ratio)
    sweep = sweep_switch(pipe, small, prompts, **sweep_kwargs)
    return sweep.pick(min_ssim=min_ssim, max_time_ratio=max_time_ratio), sweep
