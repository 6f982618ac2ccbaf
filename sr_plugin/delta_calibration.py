"""Which delta to pick: sweep the switch (adaptive deltas and fixed steps) on your pipeline and prompts, measure
each setting's speed-up and its fidelity to large only, and pick the setting that meets a target.

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

from .api import apply
from .evaluate import fidelity
from .quality import timed_run

#: Deltas swept by default: a decade on either side of SRDiffusion's 0.01.
DEFAULT_DELTAS: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)


@dataclass(frozen=True)
class SweepRow:
    """One setting, over the prompt set: time ratio (median of per-prompt SR / large-only denoising time),
    mean PSNR and SSIM against large only, mean switch step, and the scorer's accuracy if one was given."""

    setting: str
    delta: float | None
    switch_step: int | None
    mean_switch_step: float | None
    time_ratio: float
    psnr: float
    ssim: float
    accuracy: float | None = None

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


@dataclass
class DeltaCalibration:
    rows: list[SweepRow]

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
                raise ValueError(f"no setting keeps a mean SSIM of {min_ssim} against large only: the best is "
                                 f"{best.setting} with {best.ssim:.4f}; lower the target or sweep smaller deltas")
            return max(fits, key=lambda r: (r.speedup, r.ssim))
        fits = [r for r in self.rows if r.time_ratio <= max_time_ratio]
        if not fits:
            best = min(self.rows, key=lambda r: r.time_ratio)
            raise ValueError(f"no setting runs within {max_time_ratio} of the large-only time: the fastest is "
                             f"{best.setting} at {best.time_ratio:.3f}; raise the target or sweep larger deltas")
        return max(fits, key=lambda r: (r.ssim, r.speedup))

    def table(self) -> str:
        lines = ["| setting | mean switch step | time ratio | speed-up | PSNR (dB) | SSIM | accuracy |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            k = "-" if r.mean_switch_step is None else f"{r.mean_switch_step:.1f}"
            acc = "-" if r.accuracy is None else f"{r.accuracy:.1f}%"
            lines.append(f"| {r.setting} | {k} | {r.time_ratio:.3f} | {r.speedup:.2f}x | {r.psnr:.2f} | "
                         f"{r.ssim:.4f} | {acc} |")
        return "\n".join(lines)


def _run(pipe: Any, prompt: str, seed: int, steps: int, call: dict[str, Any]) -> tuple[np.ndarray, float]:
    video, denoise, _ = timed_run(pipe, prompt, seed, steps, **call)
    return video, denoise


def sweep_switch(pipe: Any, small: Any, prompts: Sequence[str], *,
                 deltas: Sequence[float] = DEFAULT_DELTAS, switch_steps: Sequence[int] = (),
                 num_inference_steps: int = 50, seed: int = 0, apply_kwargs: dict[str, Any] | None = None,
                 scorer: Callable[[np.ndarray, str], bool] | None = None, say: Any = None,
                 **call_kwargs: Any) -> DeltaCalibration:
    """Every delta and fixed switch step on every prompt (seeds ``seed``, ``seed + 1``, ...), each against the
    large-only run of the same prompt and seed (its video for fidelity; for time, a large-only run right before
    the setting's, in paired rounds). ``scorer(video, prompt) -> bool`` adds an accuracy column."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    settings = [("delta", float(d)) for d in deltas] + [("switch_step", int(k)) for k in switch_steps]
    if not settings:
        raise ValueError("nothing to sweep: give deltas or switch_steps")
    apply_kwargs = dict(apply_kwargs or {})
    for kind, value in settings:  # every setting is checked before any generation
        handle = apply(pipe, small, **{kind: value}, **apply_kwargs)
        handle.remove()
    _run(pipe, prompts[0], seed, num_inference_steps, call_kwargs)  # one-off first-call costs, untimed
    rows = []
    for kind, value in settings:
        ratios, psnrs, ssims, ks, right = [], [], [], [], []
        for i, prompt in enumerate(prompts):
            # Paired rounds: large only again right before the setting, so that drift hits both alike.
            reference_video, reference_seconds = _run(pipe, prompt, seed + i, num_inference_steps, call_kwargs)
            handle = apply(pipe, small, **{kind: value}, **apply_kwargs)
            try:
                video, seconds = _run(pipe, prompt, seed + i, num_inference_steps, call_kwargs)
                k = handle.switch_step
            finally:
                handle.remove()
            psnr, ssim = fidelity(video, reference_video)
            ratios.append(seconds / reference_seconds)
            psnrs.append(min(psnr, 100.0))  # identical videos (never switched) have infinite PSNR
            ssims.append(ssim)
            if k is not None:
                ks.append(k)
            if scorer is not None:
                right.append(bool(scorer(video, prompt)))
        name = f"delta={value}" if kind == "delta" else f"k={value}"
        rows.append(SweepRow(name, value if kind == "delta" else None, value if kind == "switch_step" else None,
                             statistics.mean(ks) if ks else None, statistics.median(ratios),
                             statistics.mean(psnrs), statistics.mean(ssims),
                             100.0 * sum(right) / len(right) if right else None))
        if say is not None:
            say(f"{name}: switch {rows[-1].mean_switch_step}, time ratio {rows[-1].time_ratio:.3f}, "
                f"SSIM {rows[-1].ssim:.4f}")
    return DeltaCalibration(rows)


def calibrate_delta(pipe: Any, small: Any, prompts: Sequence[str], *, min_ssim: float | None = None,
                    max_time_ratio: float | None = None, **sweep_kwargs: Any) -> tuple[SweepRow, DeltaCalibration]:
    """`sweep_switch`, then `DeltaCalibration.pick`; the targets are checked before any generation."""
    if (min_ssim is None) == (max_time_ratio is None):
        raise ValueError("give exactly one target: min_ssim= or max_time_ratio=")
    _check_target("min_ssim", min_ssim)
    _check_target("max_time_ratio", max_time_ratio)
    sweep = sweep_switch(pipe, small, prompts, **sweep_kwargs)
    return sweep.pick(min_ssim=min_ssim, max_time_ratio=max_time_ratio), sweep
