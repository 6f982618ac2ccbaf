"""Paired comparison of a setting against large only on the same (prompt, seed) pairs, and the quality floor.

On one pair both runs start from the same noise, so the two are compared pair by pair: a pair the reference gets
right and the setting wrong is *lost*, the other way round *gained*. McNemar's exact test asks whether lost and
gained differ more than chance would make them (a two-sided binomial test on the discordant pairs, from scipy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Paired:
    """A setting against the reference on ``n`` pairs: ``lost`` and ``gained`` pairs, the change in points of
    accuracy (``100 (gained - lost) / n``) and McNemar's exact two-sided p-value."""

    n: int
    lost: int
    gained: int
    points: float
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact(lost: int, gained: int) -> float:
    """McNemar's exact test: the two-sided binomial p-value of ``lost`` against ``gained`` discordant pairs."""
    if lost + gained == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(lost, lost + gained, 0.5).pvalue)


def paired(reference: Sequence[bool], setting: Sequence[bool]) -> Paired:
    if len(reference) != len(setting) or not reference:
        raise ValueError("paired needs one result per pair on both sides, and at least one pair")
    lost = sum(bool(r) and not bool(s) for r, s in zip(reference, setting))
    gained = sum(bool(s) and not bool(r) for r, s in zip(reference, setting))
    return Paired(len(reference), lost, gained, 100.0 * (gained - lost) / len(reference), mcnemar_exact(lost, gained))


@dataclass(frozen=True)
class Floor:
    """The quality a calibrated setting must keep against large only, on the same pairs.

    With a scorer (a judge of each video): at most ``points`` points of accuracy below large only, and not worse
    by McNemar's exact test at level ``alpha``. Without one: a mean SSIM (``min_ssim``) and/or PSNR in dB
    (``min_psnr``) of the decoded frames against large only's."""

    points: float | None = None
    min_ssim: float | None = None
    min_psnr: float | None = None
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.points is None and self.min_ssim is None and self.min_psnr is None:
            raise ValueError("a floor needs points= (with a scorer), min_ssim= or min_psnr=")
        for name, value, ok in (
            ("points", self.points, lambda v: v >= 0),
            ("min_ssim", self.min_ssim, lambda v: 0 < v <= 1),
            ("min_psnr", self.min_psnr, lambda v: v > 0),
            ("alpha", self.alpha, lambda v: 0 < v < 1),
        ):
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not ok(value)
            ):
                raise ValueError(f"floor {name} out of range: {value!r}")

    @property
    def needs_scorer(self) -> bool:
        return self.points is not None

    def shortfall(self, compared: Paired | None, ssim: float | None, psnr: float | None) -> float:
        """How far a setting falls below the floor (0 when it holds it), in the floor's own units summed: what
        "closest" means when nothing holds it."""
        short = 0.0
        if self.points is not None:
            assert compared is not None, "a floor in points compares the judge's verdicts"
            short += max(0.0, -compared.points - self.points)
            if compared.p_value < self.alpha and compared.lost > compared.gained:
                short += 1e-9  # significantly worse: never within, even when the points alone would pass
        if self.min_ssim is not None:
            short += max(0.0, self.min_ssim - (ssim if ssim is not None else 1.0))
        if self.min_psnr is not None:
            short += max(0.0, self.min_psnr - (psnr if psnr is not None else math.inf))
        return short

    def holds(self, compared: Paired | None, ssim: float | None, psnr: float | None) -> bool:
        return self.shortfall(compared, ssim, psnr) == 0.0

    def describe(self) -> str:
        parts = []
        if self.points is not None:
            parts.append(
                f"at most {self.points:g} points of accuracy below large only and not worse by McNemar's "
                f"exact test (p < {self.alpha:g})"
            )
        if self.min_ssim is not None:
            parts.append(f"mean SSIM against large only >= {self.min_ssim:g}")
        if self.min_psnr is not None:
            parts.append(f"mean PSNR against large only >= {self.min_psnr:g} dB")
        return "; ".join(parts)
