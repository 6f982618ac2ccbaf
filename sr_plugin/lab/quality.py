"""Quality and time of large only, SR, a cooperation schedule and small only on a trained family, prompt by prompt.

For each (prompt, seed) the runs share the initial noise; each is scored by `sr_plugin.lab.evaluate`, SR and
small only are also compared with the large-only video (PSNR, SSIM), and the denoising loop is timed on its
own (from the progress bar's opening to its closing: text encoding and decoding excluded), so that the measured
SR / large time ratio can be set against the ideal ``N / (k + (N - k) / r)`` with ``r`` measured too.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..pipeline.costs import ideal_speedup
from ..pipeline.timing import timed_run
from ..switch.api import apply
from . import evaluate, task, trained

#: The set-ups compared: large only, SR at its default (or a given delta), a cooperation schedule (the family's
#: calibrated one, when given) and small only.
MODES: tuple[str, ...] = ("large", "sr", "schedule", "small")


def mode_setup(mode: str, delta: float | None = None, schedule: str | None = None) -> dict[str, Any] | None:
    """`sr_plugin.apply`'s keywords for a mode (None: large only, the pipeline alone)."""
    return {"large": None, "sr": {"delta": delta}, "schedule": {"schedule": schedule}, "small": {"switch_step": 0}}[
        mode
    ]


@dataclass
class Run:
    prompt: str
    seed: int
    mode: str
    video: np.ndarray
    denoise_s: float
    total_s: float
    switch_step: int | None
    score: evaluate.VideoScore
    psnr: float | None = None
    ssim: float | None = None
    #: The noise level where the small model took over (("sigma", 0.82) for Wan, ("abar", 0.12) for CogVideoX).
    switch_noise: tuple[str, float] | None = None
    #: The model that ran each step.
    roles: list[str] = field(default_factory=list)


@dataclass
class ModeSummary:
    mode: str
    prompt_accuracy: float
    attribute_accuracy: float
    psnr: float | None
    ssim: float | None
    denoise_s: float
    speedup: float
    ideal_speedup: float | None
    mean_switch_step: float | None
    #: The mean noise level at the switch, by the family's measure: ("sigma", 0.82) or ("abar", 0.12).
    mean_switch_noise: tuple[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FamilyResult:
    family: str
    steps: int
    delta: float | None
    #: The cooperation schedule of the "schedule" mode (None: not run).
    schedule: str | None = None
    runs: list[Run] = field(default_factory=list)
    summaries: dict[str, ModeSummary] = field(default_factory=dict)
    step_ratio: float | None = None


def generate_video(
    pipe: Any, family: str, prompt: str, seed: int, steps: int, guidance_scale: float | None = None
) -> tuple[np.ndarray, float, float]:
    """One video of a trained family, with the call arguments it was trained for (``guidance_scale``: another
    CFG scale than the family's shipped one, for experiments)."""
    task.parse(prompt)
    scale = trained.GUIDANCE[family] if guidance_scale is None else guidance_scale
    return timed_run(pipe, prompt, seed, steps, guidance_scale=scale, **trained.CALL)


def run_modes(
    pipe: Any,
    small: torch.nn.Module,
    extra: dict[str, Any],
    family: str,
    prompt: str,
    seed: int,
    steps: int,
    delta: float | None = None,
    modes: tuple[str, ...] = ("large", "sr", "small"),
    schedule: str | None = None,
) -> dict[str, Run]:
    """The prompt under each mode, one after the other (interleaved, so that machine drift hits all alike)."""
    from ..adapters import adapter_for

    runs: dict[str, Run] = {}
    for mode in modes:
        setup = mode_setup(mode, delta, schedule)
        handle = apply(pipe, small, **setup, **extra) if setup is not None else None
        try:
            video, denoise, total = generate_video(pipe, family, prompt, seed, steps)
            switch = handle.switch_step if handle is not None else None
            roles = [r.model for r in handle.trace] if handle is not None else ["large"] * steps
            noise = adapter_for(pipe).noise_level(pipe.scheduler, switch) if switch is not None else None
        finally:
            if handle is not None:
                handle.remove()
        runs[mode] = Run(
            prompt,
            seed,
            mode,
            video,
            denoise,
            total,
            switch,
            evaluate.score_video(video, prompt),
            switch_noise=noise,
            roles=roles,
        )
    if "large" in runs:
        for mode, run in runs.items():
            if mode != "large":
                run.psnr, run.ssim = evaluate.fidelity(run.video, runs["large"].video)
    return runs


def family_modes(schedule: str | None) -> tuple[str, ...]:
    return tuple(m for m in MODES if m != "schedule" or schedule is not None)


def evaluate_family(
    family: str,
    pairs: list[tuple[str, int]],
    steps: int = 50,
    delta: float | None = None,
    say: Any = None,
    schedule: str | None = None,
    small: str = "competent",
) -> FamilyResult:
    """Run and score every (prompt, seed) under large only, SR, ``schedule`` (if given) and small only (the
    family's ``small`` model: "competent" or "weak"); summarize per mode."""
    pipe, small_model, extra = trained.load(family, small=small)
    result = FamilyResult(family, steps, delta, schedule)
    for i, (prompt, seed) in enumerate(pairs):
        runs = run_modes(pipe, small_model, extra, family, prompt, seed, steps, delta, family_modes(schedule), schedule)
        result.runs.extend(runs.values())
        if say is not None:
            marks = "  ".join(f"{m} {'right' if r.score.right else 'WRONG'}" for m, r in runs.items())
            noise = runs["sr"].switch_noise
            level = f" ({noise[0]} {noise[1]:.3g})" if noise is not None else ""
            say(
                f"[{family} {i + 1}/{len(pairs)}] {prompt} (seed {seed}): {marks}, switch at "
                f"{runs['sr'].switch_step}{level}"
            )
    summarize_result(result)
    return result


def summarize_result(result: FamilyResult) -> None:
    by_mode = {m: [r for r in result.runs if r.mode == m] for m in MODES if any(r.mode == m for r in result.runs)}
    # One statistic for every time figure: the median (a busy first run moves no figure), and each speed-up is
    # large only's median time over the mode's.
    large_median = statistics.median(r.denoise_s for r in by_mode["large"])
    # r: a large step against a small one, from the large-only and small-only loops.
    result.step_ratio = large_median / statistics.median(r.denoise_s for r in by_mode["small"])
    for mode, runs in by_mode.items():
        acc = evaluate.summarize([r.score for r in runs])
        median_s = statistics.median(r.denoise_s for r in runs)
        ks = [r.switch_step for r in runs if r.switch_step is not None] if mode in ("sr", "schedule") else []
        ideal = None
        if mode in ("sr", "schedule") and ks:
            ideal = statistics.mean(ideal_speedup(r.roles, result.step_ratio) for r in runs)
        result.summaries[mode] = ModeSummary(
            mode,
            acc["prompt_accuracy"],
            acc["attribute_accuracy"],
            None if mode == "large" else statistics.mean(r.psnr for r in runs),
            None if mode == "large" else statistics.mean(r.ssim for r in runs),
            median_s,
            large_median / median_s,
            ideal,
            statistics.mean(ks) if ks else None,
            _mean_noise([r.switch_noise for r in runs if mode == "sr"]),
        )


def _mean_noise(levels: list[tuple[str, float] | None]) -> tuple[str, float] | None:
    known = [level for level in levels if level is not None]
    return (known[0][0], statistics.mean(v for _, v in known)) if known else None


def format_table(results: list[FamilyResult]) -> str:
    """A markdown table: one row per family and mode."""
    lines = [
        "| family | mode | prompt accuracy | attribute accuracy | PSNR vs large (dB) | SSIM vs large | "
        "denoising s/video (median) | speed-up (ideal) | mean first hand-over to small (noise level) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for mode in res.summaries:
            s = res.summaries[mode]
            fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
            ideal = f" ({s.ideal_speedup:.2f})" if s.ideal_speedup is not None else ""
            noise = "" if s.mean_switch_noise is None else f" ({s.mean_switch_noise[0]} {s.mean_switch_noise[1]:.3g})"
            name = f"schedule {res.schedule}" if mode == "schedule" else mode
            lines.append(
                f"| {res.family} | {name} | {s.prompt_accuracy:.1f}% | {s.attribute_accuracy:.1f}% | "
                f"{fmt(s.psnr, '.2f')} | {fmt(s.ssim, '.3f')} | {s.denoise_s:.2f} | "
                f"{s.speedup:.2f}x{ideal} | {fmt(s.mean_switch_step, '.1f')}{noise} |"
            )
    return "\n".join(lines)
