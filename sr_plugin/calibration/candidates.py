"""The cooperations a calibration tries: a schedule (None: large only) with the accelerations stacked on it, as data.

The grids write every end as a fraction of the call's steps, so that a calibrated schedule carries across step
counts. ``cheap`` is a coarse grid of each order; ``full`` a finer one (`GRIDS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..switch.schedule import Schedule

#: The orders of cooperation, named by the roles of their segments.
ORDER_NAMES: dict[tuple[str, ...], str] = {
    ("large",): "large only",
    ("small",): "small only",
    ("large", "small"): "large-first",
    ("small", "large"): "small-first",
    ("large", "small", "large"): "large-small-large",
    ("small", "large", "small"): "small-large-small",
}

GRIDS: dict[str, dict[str, tuple[str, ...]]] = {
    "cheap": {
        "large-first": ("large:delta,small", "large:60%,small", "large:80%,small"),
        "small-first": ("small:10%,large", "small:20%,large", "small:30%,large", "small:40%,large"),
        "large-small-large": ("large:10%,small:40%,large", "large:20%,small:60%,large"),
        "small-large-small": ("small:20%,large:80%,small", "small:20%,large:90%,small", "small:30%,large:90%,small"),
    },
    "full": {
        "large-first": (
            "large:delta=0.003,small",
            "large:delta,small",
            "large:delta=0.03,small",
            "large:40%,small",
            "large:50%,small",
            "large:60%,small",
            "large:70%,small",
            "large:80%,small",
            "large:90%,small",
        ),
        "small-first": (
            "small:10%,large",
            "small:16%,large",
            "small:20%,large",
            "small:24%,large",
            "small:30%,large",
            "small:40%,large",
            "small:50%,large",
            "small:60%,large",
        ),
        "large-small-large": (
            "large:10%,small:30%,large",
            "large:10%,small:50%,large",
            "large:20%,small:40%,large",
            "large:20%,small:60%,large",
            "large:30%,small:50%,large",
            "large:30%,small:70%,large",
        ),
        "small-large-small": (
            "small:10%,large:80%,small",
            "small:10%,large:90%,small",
            "small:20%,large:80%,small",
            "small:20%,large:90%,small",
            "small:30%,large:80%,small",
            "small:30%,large:90%,small",
            "small:40%,large:90%,small",
        ),
    },
}


def accel_name(accel: Mapping[str, Any]) -> str:
    """How an `accelerate` set-up reads: "teacache 0.1 + pab"."""
    parts = []
    for kind, value in accel.items():
        if value is True or value is None or kind == "pab":
            parts.append(kind)
        elif isinstance(value, (int, float)):
            parts.append(f"{kind} {value:g}")
        else:
            threshold = getattr(value, "threshold", None)
            parts.append(kind if threshold is None else f"{kind} {threshold}")
    return " + ".join(parts)


@dataclass(frozen=True)
class Candidate:
    """One cooperation: a schedule for `sr_plugin.apply` (None: the pipeline alone, large only) and the keywords
    of `sr_plugin.accelerate` stacked on it (empty: none)."""

    schedule: str | None
    accel: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.schedule is not None:
            object.__setattr__(self, "schedule", str(Schedule.parse(self.schedule)))
        if not isinstance(self.accel, Mapping):
            raise TypeError(f"a candidate's accelerations are accelerate()'s keywords as a mapping, got {self.accel!r}")

    @property
    def name(self) -> str:
        base = self.schedule or "large"
        return base if not self.accel else f"{base} + {accel_name(self.accel)}"

    @property
    def order(self) -> str:
        roles = Schedule.parse(self.schedule).roles if self.schedule is not None else ("large",)
        return ORDER_NAMES.get(roles, "-".join(roles))


def candidate_grid(
    grid: str = "cheap", accelerations: Sequence[Mapping[str, Any]] = ({},), orders: Sequence[str] | None = None
) -> list[Candidate]:
    """Small only and every schedule of the grid's orders, each with every acceleration set-up given (``{}``: none;
    large only with each non-empty one too). Large only itself is the calibration's reference, always run."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose from {', '.join(GRIDS)}")
    chosen = GRIDS[grid] if orders is None else {o: GRIDS[grid][o] for o in orders if _known(o, grid)}
    out = []
    for accel in accelerations:
        if accel:
            out.append(Candidate(None, dict(accel)))
        out.append(Candidate("small", dict(accel)))
        out.extend(Candidate(s, dict(accel)) for schedules in chosen.values() for s in schedules)
    return out


def _known(order: str, grid: str) -> bool:
    if order not in GRIDS[grid]:
        raise ValueError(f"unknown order {order!r}; the orders are: {', '.join(GRIDS[grid])}")
    return True
