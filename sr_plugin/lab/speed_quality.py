"""The speed-quality benchmark on a trained family: every acceleration row with its quality figure.

Each row is one configuration of the same pipeline (switch, TeaCache, PAB, First Block Cache, compile, and
their stacks), run on the same (prompt, seed) pairs. Per row: prompt and attribute accuracy from
`sr_plugin.lab.evaluate`, PSNR and SSIM against the large-only video of the same pair, the time ratio (median over
pairs of the row's denoising time over that of a large-only run of the same pair on a second, plain copy of
the pipeline, run right before it: paired rounds, so that a machine's drift hits both alike), TeaCache's
skipped fraction, PAB's reused fraction and the mean switch step. `benchmarks/speed_quality.py` runs it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..accel import PABConfig, accelerate
from ..pipeline.trace import StepRecord
from ..switch.api import apply
from . import evaluate
from .quality import generate_video

#: Switch settings swept: deltas a decade around SRDiffusion's 0.01 (None: the default), and fixed steps.
DELTAS: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
SWITCH_STEPS: tuple[int, ...] = (10, 20, 30, 40)
#: Fixed switch steps of the stacked rows besides the default delta: a late switch leaves the large model the
#: steps where these weak models still decide attributes, and TeaCache then buys the speed back.
STACKED_SWITCH_STEPS: tuple[int, ...] = (30, 40)
#: TeaCache thresholds of those late-switch stacked rows.
STACKED_THRESHOLDS: tuple[float, ...] = (0.05, 0.1, 0.2)
#: TeaCache thresholds swept, in units of the calibrated (shipped) polynomial's accumulated output change.
TEACACHE_THRESHOLDS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
#: diffusers' First Block Cache threshold of today's matrix.
FBCACHE = 0.1
#: How many accuracy points below large only still count as "within" (the quality floor the tables use).
TOLERANCE_POINTS = 3.0


@dataclass(frozen=True)
class Config:
    """One row's set-up: switch keywords for `apply` (None: no switch) and keywords for `accelerate`."""

    name: str
    kind: str
    switch: dict[str, Any] | None
    accel: dict[str, Any]


def configs(
    deltas: Sequence[float] = DELTAS,
    switch_steps: Sequence[int] = SWITCH_STEPS,
    thresholds: Sequence[float] = TEACACHE_THRESHOLDS,
) -> list[Config]:
    """Today's matrix (each acceleration alone and with the switch, all stacked) plus the sweeps."""
    sr: dict[str, Any] = {}
    rows = [Config("large", "large", None, {}), Config("small", "small", {"switch_step": 0}, {})]
    rows += [Config(f"sr delta={d}", "sr", {"delta": d}, {}) for d in deltas]
    rows += [Config(f"sr k={k}", "sr fixed", {"switch_step": k}, {}) for k in switch_steps]
    rows += [Config(f"teacache {t}", "teacache", None, {"teacache": t}) for t in thresholds]
    rows += [
        Config("pab", "pab", None, {"pab": PABConfig()}),
        Config("fbcache", "fbcache", None, {"fbcache": FBCACHE}),
        Config("compile", "compile", None, {"compile": True}),
    ]
    rows += [Config(f"sr+teacache {t}", "sr+teacache", sr, {"teacache": t}) for t in thresholds]
    rows += [
        Config("sr+pab", "sr+pab", sr, {"pab": PABConfig()}),
        Config("sr+fbcache", "sr+fbcache", sr, {"fbcache": FBCACHE}),
        Config("sr+compile", "sr+compile", sr, {"compile": True}),
    ]
    rows += [
        Config(f"sr+teacache {t}+pab", "sr+teacache+pab", sr, {"teacache": t, "pab": PABConfig()}) for t in thresholds
    ]
    rows += [
        Config(f"sr k={k}+teacache {t}+pab", "sr+teacache+pab", {"switch_step": k}, {"teacache": t, "pab": PABConfig()})
        for k in STACKED_SWITCH_STEPS
        for t in STACKED_THRESHOLDS
    ]
    rows += [
        Config(f"sr+teacache {t}+pab+compile", "sr+all", sr, {"teacache": t, "pab": PABConfig(), "compile": True})
        for t in thresholds[:1]
    ]
    return rows


@dataclass
class Row:
    name: str
    kind: str
    prompt_accuracy: float
    attribute_accuracy: float
    psnr: float | None
    ssim: float | None
    time_ratio: float
    denoise_s: float
    teacache_skipped: float | None
    pab_reused: float | None
    mean_switch_step: float | None
    #: Against large only on the same pairs: pairs lost and gained, McNemar's exact p-value (`add_paired`).
    lost: int | None = None
    gained: int | None = None
    p_value: float | None = None
    #: Speed-up modelled from this machine's step costs over every row's steps (`add_modelled`).
    modelled_speedup: float | None = None
    #: Per pair: whether the prompt came out right.
    right: list[bool] = field(default_factory=list)
    #: Per pair: the timed steps of the call (records and seconds), for the step-cost model.
    calls: list[Any] = field(default_factory=list, repr=False)

    @property
    def speedup(self) -> float:
        return 1.0 / self.time_ratio

    def as_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "speedup": self.speedup}
        out.pop("calls")
        return out


def schedule_configs(schedules: Sequence[str], stack_thresholds: Sequence[float] = ()) -> list[Config]:
    """Rows of cooperation schedules (named by the schedule, kind by their order), each also stacked with TeaCache at
    ``stack_thresholds``, alone and with PAB; and TeaCache alone (with and without PAB) at those thresholds."""
    from ..calibration import Candidate

    rows = [Config(s, Candidate(s).order, {"schedule": s}, {}) for s in schedules]
    for t in stack_thresholds:
        rows.append(Config(f"teacache {t}", "teacache", None, {"teacache": t}))
        rows.append(Config(f"teacache {t}+pab", "teacache+pab", None, {"teacache": t, "pab": PABConfig()}))
        for stack, accel in (("teacache", {"teacache": t}), ("teacache+pab", {"teacache": t, "pab": PABConfig()})):
            rows += [
                Config(
                    f"{s}+{stack.replace('teacache', f'teacache {t}')}",
                    f"{Candidate(s).order}+{stack}",
                    {"schedule": s},
                    dict(accel),
                )
                for s in schedules
            ]
    return rows


def add_paired(rows: Sequence[Row]) -> None:
    """Each row against the first (large only), pair by pair: lost, gained and McNemar's exact p-value."""
    from ..calibration import paired

    reference = rows[0].right
    for row in rows[1:]:
        p = paired(reference, row.right)
        row.lost, row.gained, row.p_value = p.lost, p.gained, p.p_value


def add_modelled(rows: Sequence[Row]) -> None:
    """Each row's speed-up modelled from the step costs fitted on every row's timed steps (large only's time at
    the cost of a plain large step)."""
    from ..pipeline.costs import StepCosts

    costs = StepCosts([c for row in rows for c in row.calls])
    large = costs.plain("large")
    reference = sum(large * len(c) for c in rows[0].calls)
    for row in rows:
        if row.calls:
            row.modelled_speedup = reference / sum(costs.time(c) for c in row.calls)


def _fraction(trace: list[StepRecord], field: str, hit: Callable[[str], bool]) -> float | None:
    values = [v for step in trace for v in getattr(step, field).values()]
    return sum(map(hit, values)) / len(values) if values else None


def run_config(
    pipe: Any,
    small: torch.nn.Module,
    extra: dict[str, Any],
    family: str,
    config: Config,
    pairs: Sequence[tuple[str, int]],
    steps: int,
    reference: dict[tuple[str, int], np.ndarray],
    warmup_prompt: str | None = None,
    plain: Any = None,
    clock: Any = None,
) -> tuple[Row, list[tuple[np.ndarray, float]]]:
    """Set ``config`` up, run every pair, take it down; returns the row and each pair's (video, seconds).
    ``reference`` maps a pair to its large-only video (empty for the large-only row itself); ``plain``, a
    second unpatched copy of the pipeline, times large only right before each of the row's runs; ``clock``, a
    `StepClock` installed on ``pipe``, keeps each run's step times."""
    sr = apply(pipe, small, **config.switch, **extra) if config.switch is not None else None
    accel = accelerate(pipe, **config.accel) if config.accel else None
    try:
        if warmup_prompt is not None:  # compile's first call compiles: keep it out of the figures
            generate_video(pipe, family, warmup_prompt, 0, steps)
        outputs, scores, fidelity, ratios, ks, traces, calls = [], [], [], [], [], [], []
        for prompt, seed in pairs:
            ref_seconds = generate_video(plain, family, prompt, seed, steps)[1] if plain is not None else None
            video, seconds, _ = generate_video(pipe, family, prompt, seed, steps)
            if clock is not None and clock.calls:
                calls.append(clock.calls[-1])
            outputs.append((video, seconds))
            scores.append(evaluate.score_video(video, prompt))
            if ref_seconds is not None:
                ratios.append(seconds / ref_seconds)
            if reference:
                fidelity.append(evaluate.fidelity(video, reference[(prompt, seed)]))
            if sr is not None and sr.switch_step is not None:
                ks.append(sr.switch_step)
            if accel is not None:
                traces.extend(accel.trace)
    finally:
        if accel is not None:
            accel.remove()
        if sr is not None:
            sr.remove()
    acc = evaluate.summarize(scores)
    row = Row(
        config.name,
        config.kind,
        acc["prompt_accuracy"],
        acc["attribute_accuracy"],
        statistics.mean(min(p, 100.0) for p, _ in fidelity) if fidelity else None,
        statistics.mean(s for _, s in fidelity) if fidelity else None,
        statistics.median(ratios) if ratios else 1.0,
        statistics.mean(s for _, s in outputs),
        _fraction(traces, "cache", lambda v: v == "skipped"),
        _fraction(traces, "attention", lambda v: v != "computed"),
        statistics.mean(ks) if ks else None,
        right=[s.right for s in scores],
        calls=calls,
    )
    return row, outputs


def pareto_front(rows: Sequence[Row]) -> list[Row]:
    """The rows no other row beats on both speed-up and attribute accuracy, fastest last."""
    front = [
        r
        for r in rows
        if not any(
            o.speedup >= r.speedup
            and o.attribute_accuracy >= r.attribute_accuracy
            and (o.speedup > r.speedup or o.attribute_accuracy > r.attribute_accuracy)
            for o in rows
        )
    ]
    return sorted(front, key=lambda r: r.speedup)


#: The accuracies a row can be judged by (`Row` fields).
ACCURACIES: tuple[str, ...] = ("prompt_accuracy", "attribute_accuracy")


def fastest_within(
    rows: Sequence[Row],
    kinds: Sequence[str],
    reference_accuracy: float,
    points: float = TOLERANCE_POINTS,
    accuracy: str = "attribute_accuracy",
) -> Row | None:
    """The fastest row of the given kinds whose ``accuracy`` (a `Row` field: prompt or attribute accuracy) is at
    most ``points`` below the reference."""
    if accuracy not in ACCURACIES:
        raise ValueError(f"accuracy must be one of {', '.join(ACCURACIES)}, got {accuracy!r}")
    fits = [r for r in rows if r.kind in kinds and getattr(r, accuracy) >= reference_accuracy - points]
    return max(fits, key=lambda r: r.speedup, default=None)


def format_rows(rows: Sequence[Row]) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [
        "| row | prompt acc. | lost / gained | McNemar p | attribute acc. | PSNR vs large | SSIM vs large | "
        "speed-up measured | modelled | TeaCache skipped | PAB reused | mean switch step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lg = "-" if r.lost is None else f"{r.lost} / {r.gained}"
        lines.append(
            f"| {r.name} | {r.prompt_accuracy:.1f}% | {lg} | {fmt(r.p_value, '.3f')} | "
            f"{r.attribute_accuracy:.1f}% | {fmt(r.psnr, '.2f')} | {fmt(r.ssim, '.3f')} | {r.speedup:.2f}x | "
            f"{fmt(r.modelled_speedup, '.2f')}{'x' if r.modelled_speedup else ''} | "
            f"{fmt(r.teacache_skipped, '.0%')} | {fmt(r.pab_reused, '.0%')} | {fmt(r.mean_switch_step, '.1f')} |"
        )
    return "\n".join(lines)


def plot_pareto(results: dict[str, list[Row]], path: Any) -> None:
    """Speed-up against attribute accuracy, one panel per family, the Pareto front drawn, the tolerance band
    below large only shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r.kind for rows in results.values() for r in rows})
    markers = dict(zip(kinds, "os^vD<>pPX*hH+x"))
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    for ax, (family, rows) in zip(axes[0], results.items()):
        large = next(r for r in rows if r.kind == "large")
        ax.axhspan(
            large.attribute_accuracy - TOLERANCE_POINTS,
            large.attribute_accuracy,
            color="0.9",
            label=f"within {TOLERANCE_POINTS:g} points of large only",
        )
        for kind in kinds:
            pts = [r for r in rows if r.kind == kind]
            if pts:
                ax.scatter(
                    [r.speedup for r in pts],
                    [r.attribute_accuracy for r in pts],
                    marker=markers[kind],
                    label=kind,
                    s=40,
                )
        front = pareto_front(rows)
        ax.plot([r.speedup for r in front], [r.attribute_accuracy for r in front], "k--", lw=1, label="Pareto front")
        for r in front:
            ax.annotate(
                r.name, (r.speedup, r.attribute_accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_xlabel("speed-up over large only (denoising loop, CPU)")
        ax.set_ylabel("attribute accuracy on held-out prompts (%)")
        ax.set_title(f"{family}: speed against quality")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
