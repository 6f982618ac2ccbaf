"""The speed-quality benchmark's pure parts: its rows cover today's matrix and the sweeps, the Pareto front and
the "fastest within 3 points" pick answer as documented."""

from __future__ import annotations

import pytest

from sr_plugin.lab import speed_quality as sq


def row(name, kind, accuracy, speedup):
    return sq.Row(name, kind, 0.0, accuracy, None, None, 1 / speedup, 1.0, None, None, None)


def expected_setup(name: str) -> tuple[dict | None, dict]:
    """What a row's name says it runs, read from the name alone: "sr k=30+teacache 0.2+pab" is a fixed switch at
    30 with TeaCache at 0.2 and PAB; "sr" without a setting is the default delta; "small" is k=0."""
    from sr_plugin.accel import PABConfig

    parts = name.split("+")
    switch, accel = None, {}
    head = parts[0]
    if head == "small":
        switch = {"switch_step": 0}
    elif head.startswith("sr"):
        setting = head[3:]
        switch = (
            {}
            if not setting
            else {"switch_step": int(setting[2:])}
            if setting.startswith("k=")
            else {"delta": float(setting[6:])}
        )
        if not setting and len(parts) == 1:
            raise AssertionError(f"{name}: a bare 'sr' row")
    elif head != "large":
        parts = ["", *parts]
    for part in parts[1:]:
        word, _, value = part.partition(" ")
        accel[word] = {
            "teacache": lambda value=value: float(value),
            "pab": lambda: PABConfig(),
            "compile": lambda: True,
            "fbcache": lambda: sq.FBCACHE,
        }[word]()
    return switch, accel


def test_every_row_runs_what_its_name_says():
    """A row labelled one way and set up another (a k=30 row switching at 40, PAB missing from a "+pab" row)
    would put its figures under the wrong name in every table and plot."""
    rows = sq.configs()
    assert len({c.name for c in rows}) == len(rows)
    for config in rows:
        switch, accel = expected_setup(config.name)
        assert (config.switch, config.accel) == (switch, accel), config.name
    names = {c.name for c in rows}
    for expected in ("large", "small", "pab", "fbcache", "compile", "sr+pab", "sr+fbcache", "sr+compile"):
        assert expected in names


def test_pareto_front_keeps_only_the_undominated_rows():
    rows = [
        row("a", "sr", 60, 1.0),
        row("b", "sr", 55, 2.0),
        row("c", "sr", 50, 1.5),
        row("d", "sr", 40, 3.0),
        row("e", "sr", 40, 2.5),
    ]
    assert [r.name for r in sq.pareto_front(rows)] == ["a", "b", "d"]


def test_fastest_within_tolerance_of_large_only():
    rows = [
        row("large", "large", 60, 1.0),
        row("fast", "teacache", 56.9, 4.0),
        row("ok", "teacache", 57.0, 3.0),
        row("other", "sr", 60, 9.0),
    ]
    assert sq.fastest_within(rows, ["teacache"], 60).name == "ok"
    assert sq.fastest_within(rows, ["pab"], 60) is None


def test_fastest_within_can_judge_by_whole_prompts():
    rows = [row("large", "large", 60, 1.0), row("fast", "sr", 59, 3.0), row("slow", "sr", 59, 2.0)]
    rows[1].prompt_accuracy, rows[2].prompt_accuracy, rows[0].prompt_accuracy = 40.0, 90.0, 91.0
    assert sq.fastest_within(rows, ("sr",), 60).name == "fast"  # by attributes, both are within 3 points
    assert sq.fastest_within(rows, ("sr",), 91.0, accuracy="prompt_accuracy").name == "slow"
    with pytest.raises(ValueError, match="accuracy must be one of"):
        sq.fastest_within(rows, ("sr",), 91.0, accuracy="psnr")
