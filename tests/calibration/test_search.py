"""The schedule calibration: the fastest candidate within the floor, or none; its statistics and its report."""

from __future__ import annotations

import json

import pytest
from pipeline_helpers import STEPS

import sr_plugin
from sr_plugin.calibration import (
    CalibrationReport,
    Candidate,
    CandidateResult,
    Floor,
    candidate_grid,
    mcnemar_exact,
    paired,
)
from sr_plugin.lab.tiny import TINY_CALL, tiny_pair
from sr_plugin.pipeline.costs import StepCosts
from sr_plugin.pipeline.trace import StepRecord


def test_mcnemar_exact_and_paired_counts():
    assert mcnemar_exact(0, 6) == pytest.approx(2 * 0.5**6)  # 6 lost, none gained: p = 0.03125
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 4) == pytest.approx(0.375)
    p = paired([True, True, False, True, False], [True, False, True, False, False])
    assert (p.n, p.lost, p.gained) == (5, 2, 1) and p.points == pytest.approx(-20.0)


def test_the_floor_in_points_and_in_fidelity():
    floor = Floor(points=3.0)
    assert floor.holds(paired([True] * 64, [True] * 63 + [False]), None, None)  # 1.6 points below
    assert not floor.holds(paired([True] * 64, [True] * 62 + [False] * 2), None, None)  # 3.1 points below
    assert floor.holds(paired([True] * 32 + [False] * 32, [False] * 3 + [True] * 32 + [False] * 29), None, None)
    ssim = Floor(min_ssim=0.9)
    assert ssim.holds(None, 0.95, 30.0) and not ssim.holds(None, 0.85, 30.0)
    for bad in ({}, {"points": -1}, {"min_ssim": 1.5}, {"points": 3, "alpha": 0}):
        with pytest.raises(ValueError):
            Floor(**bad)


def row(name: str, speedup: float, within: bool, shortfall: float = 0.0) -> CandidateResult:
    return CandidateResult(
        name,
        "small-first",
        name,
        {},
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        speedup,
        speedup,
        0.5,
        within,
        shortfall,
    )


class Costs:
    def as_dict(self):
        return {}


def test_the_choice_is_the_fastest_within_the_floor_or_none_and_the_closest():
    floor = Floor(min_ssim=0.9)
    reference = row("large", 1.0, True)
    report = CalibrationReport.build(
        [reference, row("a", 1.5, True), row("b", 2.5, False, 0.1), row("c", 1.9, True)],
        floor,
        [("p", 0)],
        10,
        4,
        1.0,
        Costs(),
    )
    assert report.chosen.name == "c" and report.closest is None
    report = CalibrationReport.build(
        [reference, row("a", 1.5, False, 0.3), row("b", 2.5, False, 0.1), row("c", 1.9, False, 0.1)],
        floor,
        [("p", 0)],
        10,
        4,
        1.0,
        Costs(),
    )
    assert report.chosen is None and report.closest.name == "b"  # nearest the floor, then fastest
    assert "no candidate holds the floor" in report.summary() and "b" in report.summary()
    tied = [reference, row("a", 2.0, True), row("b", 2.01, True), row("c", 1.5, True)]
    tied[1].accuracy, tied[2].accuracy, tied[3].accuracy = 95.0, 90.0, 99.0
    report = CalibrationReport.build(tied, floor, [("p", 0)], 10, 4, 1.0, Costs())
    assert report.chosen.name == "a"  # as fast as b within 1%, and better


def test_step_costs_are_medians_per_kind_of_step():
    def rec(model, cache=None):
        return StepRecord(0, 0.0, model, None, None, cache or {})

    calls = [
        [(rec("large"), 1.0), (rec("large"), 1.2), (rec("small"), 0.2)],
        [(rec("large"), 9.0), (rec("small", {"cond": "skipped"}), 0.05), (rec("small"), 0.2)],
    ]
    costs = StepCosts(calls)
    assert costs.plain("large") == 1.2 and costs.plain("small") == 0.2
    assert costs.time(calls[1]) == pytest.approx(1.2 + 0.05 + 0.2)


def test_the_grids_cover_every_order_and_carry_the_accelerations():
    cheap = candidate_grid("cheap", [{}, {"teacache": 0.1}])
    orders = {c.order for c in cheap}
    assert {
        "small only",
        "large-first",
        "small-first",
        "large-small-large",
        "small-large-small",
        "large only",
    } <= orders
    assert Candidate(None, {"teacache": 0.1}) in cheap and Candidate("small:20%,large") in cheap
    assert len(candidate_grid("full")) > len(candidate_grid("cheap"))
    assert Candidate("small:20%,large", {"teacache": 0.1, "pab": True}).name == "small:20%,large + teacache 0.1 + pab"
    with pytest.raises(ValueError, match="unknown grid"):
        candidate_grid("huge")
    with pytest.raises(ValueError, match="unknown role"):
        Candidate("tiny:3,large")


def calibrate_tiny(family, scorer_rule, **kwargs):
    """A synthetic case whose answer is known: the judge counts a video right when the small model ran at most a
    given number of its steps (read from the switch's own report of the call just run)."""
    pipe, small = tiny_pair(family)

    def scorer(video, prompt):
        handle = sr_plugin.handle_of(pipe)
        small_steps = (
            0 if handle is None else sum(s.end_step - s.first_step for s in handle.segments if s.role == "small")
        )
        return scorer_rule(small_steps)

    candidates = ["small:3,large", "small:6,large", "large:3,small", "small"]
    report = sr_plugin.calibrate(
        pipe,
        small,
        ["a red fox", "a blue car"],
        scorer=scorer,
        candidates=candidates,
        num_inference_steps=STEPS,
        say=None,
        **TINY_CALL[family],
        **kwargs,
    )
    return pipe, report


def test_calibration_picks_the_fastest_candidate_within_the_floor(tmp_path):
    pipe, report = calibrate_tiny("wan", lambda small_steps: small_steps <= 5, search="grid")
    names = [r.name for r in report.rows]
    assert names == ["large", "small:3,large", "small:6,large", "large:3,small", "small"]
    by = {r.name: r for r in report.rows}
    assert [by[n].within_floor for n in names] == [True, True, False, False, False]
    assert (
        by["small"].modelled_speedup
        > by["large:3,small"].modelled_speedup
        > by["small:6,large"].modelled_speedup
        > by["small:3,large"].modelled_speedup
        > 1.0
    )  # the tiny small model is cheaper per step
    assert report.chosen.name == "small:3,large" and report.closest is None
    assert by["small:6,large"].lost == 2 and by["small:6,large"].gained == 0
    assert report.videos == (4 + 1) * 2 and report.reference.accuracy == 100.0
    assert report.cost.replayed["large"] > 0 and report.cost.replayed["small"] > 0  # shared prefixes not recomputed
    assert by["small"].psnr is not None and by["small"].ssim < 1.0
    report.to_json(tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["chosen"] == "small:3,large" and len(saved["rows"]) == 5
    report.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000
    assert sr_plugin.handle_of(pipe) is None and "_sr_plugin_calls" not in vars(pipe)  # nothing left on the pipe


def test_fastest_first_gives_the_grids_answer_and_runs_no_slower_candidate():
    """The same synthetic case: fastest first tries small, large:3,small, small:6,large (each dropped after its
    first pair: large only is right on every pair, so one loss is 50 points on two pairs) and stops at
    small:3,large, which holds; nothing slower runs."""
    _, grid = calibrate_tiny("wan", lambda small_steps: small_steps <= 5, search="grid")
    pipe, fastest = calibrate_tiny("wan", lambda small_steps: small_steps <= 5)
    assert fastest.chosen.name == grid.chosen.name == "small:3,large"
    by = {r.name: r for r in fastest.rows}
    assert [
        (n, by[n].pairs_run, by[n].status) for n in ("small", "large:3,small", "small:6,large", "small:3,large")
    ] == [
        ("small", 1, "dropped after 1 pairs"),
        ("large:3,small", 1, "dropped after 1 pairs"),
        ("small:6,large", 1, "dropped after 1 pairs"),
        ("small:3,large", 2, "held"),
    ]
    assert fastest.videos == 2 + 1 + 1 + 1 + 2 < grid.videos
    assert fastest.cost.computed["large"] < grid.cost.computed["large"]
    assert sr_plugin.handle_of(pipe) is None


def test_calibration_reports_none_when_nothing_holds_the_floor():
    for search in ("grid", "fastest"):
        _, report = calibrate_tiny("cogvideox", lambda small_steps: small_steps == 0, search=search)
        assert report.chosen is None
        assert report.closest.name == "small"  # all equally short of the floor: the fastest of them
        assert "no candidate holds the floor" in report.summary()


def test_confirm_reruns_the_choice_on_new_pairs_and_falls_back_to_the_next_fastest():
    """The winner's curse, synthetic: on the calibration's prompts the judge lets the small model run 6 of 10 steps,
    on the new ones 5. The calibration picks small:6,large; confirm tries it first on the new pairs, sees it miss
    the floor, and stops at small:3,large, which holds it: two candidates run, the slower one chosen."""
    from sr_plugin.calibration import confirm

    new = ["a green tree", "a grey cat"]
    pipe, small = tiny_pair("wan")

    def scorer(video, prompt):
        handle = sr_plugin.handle_of(pipe)
        small_steps = (
            0 if handle is None else sum(s.end_step - s.first_step for s in handle.segments if s.role == "small")
        )
        return small_steps <= (5 if prompt in new else 6)

    call = dict(num_inference_steps=STEPS, say=None, **TINY_CALL["wan"])
    report = sr_plugin.calibrate(
        pipe,
        small,
        ["a red fox", "a blue car"],
        scorer=scorer,
        candidates=["small:3,large", "small:6,large", "small"],
        **call,
    )
    assert report.chosen.name == "small:6,large"
    checked = confirm(pipe, small, report, new, seed=100, scorer=scorer, **call)
    assert [r.name for r in checked.rows] == ["large", "small:6,large", "small:3,large"]
    assert [r.within_floor for r in checked.rows] == [True, False, True]
    assert checked.chosen.name == "small:3,large" and checked.videos == 2 + 1 + 2  # dropped after its first pair
    assert checked.rows[1].lost == 1 and checked.rows[1].status == "dropped after 1 pairs"
    assert checked.pairs == [("a green tree", 100), ("a grey cat", 101)]
    nothing = confirm(pipe, small, ["small:6,large"], new, seed=100, scorer=scorer, **call)
    assert nothing.chosen is None and nothing.closest.name == "small:6,large"
    with pytest.raises(ValueError, match="must be new"):
        confirm(pipe, small, report, ["a red fox"], seed=report.pairs[0][1], scorer=scorer, **call)
    assert sr_plugin.handle_of(pipe) is None


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"candidates": ["small:20,large"]}, ValueError, "beyond this call's 10 steps"),
        ({"candidates": ["small:3,large", "small:3,large"]}, ValueError, "given twice"),
        ({"candidates": 3}, TypeError, "grid name"),
        ({"floor": Floor(points=3.0), "scorer": None}, ValueError, "needs a scorer"),
        ({"num_inference_steps": 0}, ValueError, "positive int"),
        ({"accelerations": [{"teacache": -1}]}, ValueError, "threshold"),
        ({"scorer": "yes"}, TypeError, "scorer must be a function"),
        (
            {"candidates": ["small:3,large", "large:5,small:8,large"], "num_inference_steps": 2},
            ValueError,
            "candidate 'small:3,large' with num_inference_steps=2",
        ),
        ({"search": "random"}, ValueError, "search must be one of fastest, grid"),
        ({"step_times": (1.0, -2)}, ValueError, "step_times"),
        ({"resume": "/no/such/report.json"}, ValueError, "no such report"),
    ],
)
def test_bad_calibration_input_is_refused_before_any_video(kwargs, error, match):
    pipe, small = tiny_pair("wan")
    called = []
    original = pipe.transformer.forward
    pipe.transformer.forward = lambda *a, **k: called.append(1) or original(*a, **k)
    kwargs.setdefault("num_inference_steps", STEPS)
    with pytest.raises(error, match=match):
        sr_plugin.calibrate(pipe, small, ["a red fox"], say=None, **kwargs)
    assert not called and sr_plugin.handle_of(pipe) is None


def test_resuming_a_calibration_cut_off_halfway_gives_the_report_of_an_uninterrupted_one(tmp_path):
    """The judge stops the run part way (as a killed process would); `resume=` continues from the pairs its
    saved report finished, and the report equals an uninterrupted run's (every figure but the times)."""

    def fields(report):
        return [
            (r.name, r.accuracy, r.lost, r.gained, r.psnr, r.ssim, r.within_floor, r.pairs_run, r.status)
            for r in report.rows
        ], report.chosen.name

    rule = lambda small_steps: small_steps <= 5  # noqa: E731
    times = {"step_times": (1.0, 0.25)}  # the order from given step times: the same in both runs
    _, whole = calibrate_tiny("wan", rule, **times)
    calls = []

    def stop_after_four(small_steps):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return rule(small_steps)

    saved = tmp_path / "calibration.json"
    with pytest.raises(KeyboardInterrupt):
        calibrate_tiny("wan", stop_after_four, save_to=saved, **times)
    progress = json.loads(saved.read_text())["progress"]
    assert len(progress["reference"]) == 2 and sum(len(r) for r in progress["candidates"].values()) == 2
    _, resumed = calibrate_tiny("wan", rule, resume=saved, **times)
    assert fields(resumed) == fields(whole)
    assert resumed.videos < whole.videos  # what was finished was not run again (large only's videos excepted)
