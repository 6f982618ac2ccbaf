"""What a calibration found: one row per candidate, the floor, the choice (or the closest, when none holds it),
as a table, a JSON file and a plot of quality against speed-up."""

from __future__ import annotations

import datetime
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from .stats import Floor

#: Candidates whose modelled speed-ups differ by less than this fraction count as equally fast (the step-cost
#: model cannot separate them); among them the calibration picks the better quality.
SPEED_TIE = 0.01


@dataclass
class CandidateResult:
    name: str
    order: str
    schedule: str | None
    accel: dict[str, Any]
    accuracy: float | None
    lost: int | None
    gained: int | None
    points: float | None
    p_value: float | None
    psnr: float | None
    ssim: float | None
    modelled_speedup: float
    measured_speedup: float
    small_share: float
    within_floor: bool
    shortfall: float
    right: list[bool] = field(default_factory=list, repr=False)
    #: On how many of the pairs it ran, and why it stopped ("held", "dropped after k pairs", "missed the floor",
    #: "not needed": slower than the answer, never run on every pair).
    pairs_run: int = 0
    status: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["accel"] = {
            k: (v if isinstance(v, (int, float, bool, str, type(None))) else repr(v)) for k, v in self.accel.items()
        }
        return out


@dataclass
class Cost:
    """What a calibration spent: model steps computed and replayed (by role), videos and seconds."""

    computed: dict[str, int]
    replayed: dict[str, int]
    videos: int
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.computed.get('large', 0):,} large and {self.computed.get('small', 0):,} small model steps "
            f"computed, {sum(self.replayed.values()):,} replayed, {self.videos} videos, {self.seconds / 60:.1f} "
            "minutes"
        )


@dataclass
class CalibrationReport:
    rows: list[CandidateResult]
    floor: Floor
    pairs: list[tuple[str, int]]
    steps: int
    videos: int
    seconds: float
    step_costs: dict[str, Any]
    #: The fastest (modelled) candidate within the floor; None if none holds it.
    chosen: CandidateResult | None = None
    #: Without a choice: the candidate nearest the floor (the fastest among the nearest).
    closest: CandidateResult | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    #: `confirm`'s report of the choice rerun on new pairs, where one was made.
    confirmation: CalibrationReport | None = None
    #: The model steps and time the search spent.
    cost: Cost | None = None
    #: Every result pair by pair, as `calibrate(resume=...)` reads it back.
    progress: dict[str, Any] | None = None

    @classmethod
    def build(
        cls,
        rows: list[CandidateResult],
        floor: Floor,
        pairs: list[tuple[str, int]],
        steps: int,
        videos: int,
        seconds: float,
        costs: Any,
        cost: Cost | None = None,
    ) -> CalibrationReport:
        report = cls(rows, floor, pairs, steps, videos, seconds, costs.as_dict(), environment=_environment(), cost=cost)
        candidates = rows[1:]
        within = [r for r in candidates if r.within_floor]
        if within:  # the fastest; among those within 1% of it, the best quality (accuracy, then SSIM)
            fastest = max(r.modelled_speedup for r in within)
            near = [r for r in within if r.modelled_speedup >= fastest * (1 - SPEED_TIE)]
            report.chosen = max(
                near,
                key=lambda r: (
                    r.accuracy if r.accuracy is not None else 0.0,
                    r.ssim if r.ssim is not None else 0.0,
                    r.modelled_speedup,
                ),
            )
        elif candidates:
            ran = [r for r in candidates if r.pairs_run] or candidates
            report.closest = min(ran, key=lambda r: (r.shortfall, -r.pairs_run, -r.modelled_speedup))
        return report

    @property
    def reference(self) -> CandidateResult:
        return self.rows[0]

    def summary(self) -> str:
        if self.chosen is not None:
            c = self.chosen
            return (
                f"chosen: {c.name} ({c.order}), {c.modelled_speedup:.2f}x modelled ({c.measured_speedup:.2f}x "
                f"measured){_quality(c)}"
            )
        near = self.closest
        return "no candidate holds the floor" + (
            ""
            if near is None
            else f"; the closest: {near.name} ({near.modelled_speedup:.2f}x modelled{_quality(near)})"
        )

    def table(self) -> str:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        lines = [
            "| candidate | order | prompts right | lost / gained | McNemar p | PSNR (dB) | SSIM | small steps | "
            "speed-up modelled | measured | within floor | pairs run |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            mark = " **chosen**" if r is self.chosen else (" (closest)" if r is self.closest else "")
            lg = "-" if r.lost is None or r is self.reference else f"{r.lost} / {r.gained}"
            lines.append(
                f"| {r.name}{mark} | {r.order} | {fmt(r.accuracy, '.1f')}{'%' if r.accuracy is not None else ''}"
                f" | {lg} | {fmt(None if r is self.reference else r.p_value, '.3f')} | {fmt(r.psnr, '.2f')} | "
                f"{fmt(r.ssim, '.3f')} | {r.small_share:.0%} | {r.modelled_speedup:.2f}x | "
                f"{r.measured_speedup:.2f}x | {'yes' if r.within_floor else 'no'} | {r.pairs_run}"
                f"{'' if r.status in ('', 'reference', 'held', 'missed the floor') else f' ({r.status})'} |"
            )
        if self.cost is not None:
            lines.append(f"\nsearch cost: {self.cost.describe()}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "floor": asdict(self.floor),
            "floor_text": self.floor.describe(),
            "pairs": self.pairs,
            "steps": self.steps,
            "videos": self.videos,
            "seconds": self.seconds,
            "step_costs": self.step_costs,
            "chosen": self.chosen.name if self.chosen else None,
            "closest": self.closest.name if self.closest else None,
            "summary": self.summary(),
            "environment": self.environment,
            "rows": [r.as_dict() for r in self.rows],
            "confirmation": None if self.confirmation is None else self.confirmation.as_dict(),
            "cost": None if self.cost is None else asdict(self.cost),
            "progress": self.progress,
        }

    def to_json(self, path: Any) -> None:
        with open(path, "w") as f:
            json.dump(self.as_dict(), f, indent=1, default=float)
            f.write("\n")

    def plot(self, path: Any, title: str = "") -> None:
        """Quality (prompt accuracy with a scorer, else SSIM) against modelled speed-up: one marker per candidate,
        its order by shape, the floor drawn, the chosen candidate circled."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        scored = self.reference.accuracy is not None
        quality = (lambda r: r.accuracy) if scored else (lambda r: 1.0 if r is self.reference else r.ssim)
        shown = [r for r in self.rows if r.pairs_run and quality(r) is not None or r is self.reference]
        orders = list(dict.fromkeys(r.order for r in shown))
        markers = dict(zip(orders, "*osD^vP<>Xph"))
        fig, ax = plt.subplots(figsize=(7.5, 5))
        for order in orders:
            pts = [r for r in shown if r.order == order]
            ax.scatter(
                [r.modelled_speedup for r in pts],
                [quality(r) for r in pts],
                marker=markers[order],
                s=45,
                label=order,
                alpha=0.85,
            )
        if scored and self.floor.points is not None and self.reference.accuracy is not None:
            ax.axhline(
                self.reference.accuracy - self.floor.points,
                color="0.4",
                ls="--",
                lw=1,
                label=f"floor: {self.floor.points:g} points below large only",
            )
        elif self.floor.min_ssim is not None:
            ax.axhline(self.floor.min_ssim, color="0.4", ls="--", lw=1, label=f"floor: SSIM {self.floor.min_ssim:g}")
        for r, label in ((self.chosen, "chosen"), (self.closest, "closest")):
            if r is not None:
                ax.scatter([r.modelled_speedup], [quality(r)], s=260, facecolors="none", edgecolors="red", lw=1.5)
                ax.annotate(
                    f"{label}: {r.name}",
                    (r.modelled_speedup, quality(r)),
                    fontsize=8,
                    xytext=(6, -12),
                    textcoords="offset points",
                    color="red",
                )
        ax.set_xlabel("speed-up over large only (modelled from this machine's step costs)")
        ax.set_ylabel("prompts right (%)" if scored else "mean SSIM against large only")
        ax.set_title(title or f"calibration: {len(self.rows) - 1} candidates on {len(self.pairs)} pairs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _quality(r: CandidateResult) -> str:
    if r.accuracy is not None:
        return f", {r.accuracy:.1f}% right (lost {r.lost}, gained {r.gained}, McNemar p {r.p_value:.3f})"
    return "" if r.ssim is None else f", SSIM {r.ssim:.3f}, PSNR {r.psnr:.2f} dB"


def _environment() -> dict[str, Any]:
    import diffusers
    import torch

    return {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
