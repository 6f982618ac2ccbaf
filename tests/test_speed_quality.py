"""The speed-quality benchmark's pure parts: its rows cover today's matrix and the sweeps, the Pareto front and
the "fastest within 3 points" pick answer as documented."""

from __future__ import annotations

from sr_plugin import speed_quality as sq


def row(name, kind, accuracy, speedup):
    return sq.Row(name, kind, 0.0, accuracy, None, None, 1 / speedup, 1.0, None, None, None)


def test_rows_cover_the_matrix_and_the_sweeps():
    names = [c.name for c in sq.configs()]
    for expected in ("large", "small", "pab", "fbcache", "compile", "sr+pab", "sr+fbcache", "sr+compile"):
        assert expected in names
    assert all(f"sr delta={d}" in names for d in sq.DELTAS) and all(f"sr k={k}" in names for k in sq.SWITCH_STEPS)
    assert all(f"teacache {t}" in names and f"sr+teacache {t}+pab" in names for t in sq.TEACACHE_THRESHOLDS)
    assert all(f"sr k={k}+teacache {t}+pab" in names for k in sq.STACKED_SWITCH_STEPS for t in sq.STACKED_THRESHOLDS)
    assert len(set(names)) == len(names)


def test_pareto_front_keeps_only_the_undominated_rows():
    rows = [row("a", "sr", 60, 1.0), row("b", "sr", 55, 2.0), row("c", "sr", 50, 1.5), row("d", "sr", 40, 3.0),
            row("e", "sr", 40, 2.5)]
    assert [r.name for r in sq.pareto_front(rows)] == ["a", "b", "d"]


def test_fastest_within_tolerance_of_large_only():
    rows = [row("large", "large", 60, 1.0), row("fast", "teacache", 56.9, 4.0), row("ok", "teacache", 57.0, 3.0),
            row("other", "sr", 60, 9.0)]
    assert sq.fastest_within(rows, ["teacache"], 60).name == "ok"
    assert sq.fastest_within(rows, ["pab"], 60) is None
