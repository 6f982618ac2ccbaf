"""Cooperation schedules as plain data: forms, validation, per-call resolution and the plan's decisions, no pipeline."""

from __future__ import annotations

import ast
import pathlib

import pytest

import sr_plugin.switch.schedule as schedule_module
from sr_plugin.pipeline.costs import ideal_speedup
from sr_plugin.switch.schedule import (
    AdaptiveEnd,
    FractionEnd,
    NoiseEnd,
    Schedule,
    Segment,
    StepEnd,
    roles_of,
    segments_of,
)


def runs(spec, n=50, **kw):
    return [(s.role, s.first_step, s.end_step) for s in segments_of(roles_of(spec, n, **kw))]


def test_the_string_and_the_list_forms_are_one_schedule():
    assert Schedule.parse("small:20,large") == Schedule.parse([("small", 20), ("large", None)])
    assert Schedule.parse(" large:10 , small:35 ,large") == Schedule.parse(
        [("large", 10), ("small", 35), ("large", None)]
    )
    assert Schedule.parse("small:40%,large") == Schedule.parse([("small", 0.4), ("large", None)])
    assert Schedule.parse("large:t=0.875,small").parts[0][1] == NoiseEnd(0.875)
    assert Schedule.parse("large:delta,small").parts[0][1] == AdaptiveEnd(0.01)
    assert Schedule.parse("large:delta=0.003,small").parts[0][1] == AdaptiveEnd(0.003)
    for text in (
        "small:20,large",
        "large:10,small:35,large",
        "small:40%,large",
        "large:t=0.875,small",
        "large:delta=0.003,small",
        "large:delta,small",
        "small",
        "large",
    ):
        assert str(Schedule.parse(text)) == text  # the canonical form reads back as written
        assert Schedule.parse(str(Schedule.parse(text))) == Schedule.parse(text)


def test_each_order_resolves_to_its_segments():
    assert runs("small:20,large") == [("small", 0, 20), ("large", 20, 50)]
    assert runs("large:10,small:35,large") == [("large", 0, 10), ("small", 10, 35), ("large", 35, 50)]
    assert runs("small:10,large:40,small") == [("small", 0, 10), ("large", 10, 40), ("small", 40, 50)]
    assert runs("small") == [("small", 0, 50)] and runs("large") == [("large", 0, 50)]


def test_fractions_round_half_up_and_carry_across_step_counts():
    assert runs("small:40%,large", 50) == [("small", 0, 20), ("large", 20, 50)]
    assert runs("small:40%,large", 10) == [("small", 0, 4), ("large", 4, 10)]
    assert runs([("small", 0.25), ("large", None)], 10) == [("small", 0, 3), ("large", 3, 10)]  # 2.5 -> 3
    assert FractionEnd(0.3).step(25) == 8  # 7.5 -> 8


def test_a_noise_level_end_runs_the_steps_at_or_above_it_as_wan22s_boundary_does():
    timesteps = [999.0, 950.0, 900.0, 875.0, 874.9, 700.0]
    assert NoiseEnd(0.875).step(timesteps, 1000) == 4  # t >= 875 stays in the segment
    assert runs("large:t=0.875,small", 6, timesteps=timesteps) == [("large", 0, 4), ("small", 4, 6)]
    assert runs("large:t=0.875,small", 50) == runs("large:7,small", 50)  # evenly spaced: t_j = 1000 (1 - j / 50)


@pytest.mark.parametrize(
    "spec, error, match",
    [
        ("", ValueError, "empty string"),
        ([], ValueError, "schedule is empty"),
        (3, TypeError, "must be a string"),
        ({"small": 3}, TypeError, "must be a string"),
        ("medium:3,large", ValueError, "unknown role 'medium'"),
        ([(3, 4), ("large", None)], TypeError, "role must be"),
        ([("small", 3, 4), ("large",)], TypeError, r"\(role, end\) pair"),
        (["small:3", "large"], ValueError, "unknown role 'small:3'"),
        ("small:20%,large:80%", ValueError, r"last segment but ends at 80%.*leave its end out"),
        ("large:10,small:t=0.2", ValueError, "last segment but ends at t=0.2"),
        ("small:20,large:10,small", ValueError, "ends must increase"),
        ("small:20,large:20,small", ValueError, "ends must increase"),
        ("large:t=0.5,small:t=0.9,large", ValueError, "noise levels must decrease"),
        ("small:0,large", ValueError, "empty"),
        ("small:-3,large", ValueError, "cannot be negative"),
        ([("small", -3), ("large", None)], ValueError, "cannot be negative"),
        ("small,large", ValueError, "not the last segment"),
        ("small:20,small", ValueError, "merge the two"),
        ("small:", ValueError, "end after ':' is missing"),
        ("small:abc,large", ValueError, "cannot read the end 'abc'"),
        ("small:1.5,large", ValueError, "open interval"),
        ("small:150%,large", ValueError, "between 0 and 100"),
        ("large:t=1.2,small", ValueError, "0 < R < 1"),
        ("large:t=x,small", ValueError, "must be a number"),
        ("small:delta,large", ValueError, "adaptive end"),
        ("large:delta,large:30,small", ValueError, "merge the two|adaptive end"),
        ("large:delta", ValueError, "adaptive end"),
        ("large:delta=2,small", ValueError, "open interval"),
        ("large:delta,small:30,large:delta,small", ValueError, "at most one adaptive"),
        ([("small", True), ("large", None)], TypeError, "an end is"),
        ([("small", [3]), ("large", None)], TypeError, "an end is"),
        ([("small", float("nan")), ("large", None)], ValueError, "open interval"),
    ],
)
def test_bad_schedules_are_clear_errors(spec, error, match):
    with pytest.raises(error, match=match):
        Schedule.parse(spec)


@pytest.mark.parametrize(
    "spec, n, match",
    [
        ("small:20,large", 10, "beyond this call's 10 steps"),
        (
            "small:10,large",
            10,
            r"segment 2 \(large\) gets no step of a call of 10 steps \(it would start and end at step 10\)",
        ),
        ("small:20,large:30", 50, "last segment but ends at step 30"),
        ("small:10%,large", 4, r"segment 1 \(small:10%\) gets no step .* start and end at step 0"),  # 0.4 rounds to 0
        (
            "small:5,large:40%,small",
            10,
            r"segment 2 \(large:40%\) gets no step .* end at step 4, before it starts at step 5",
        ),
        ("large:3,small:4,large", 50, None),
    ],
)
def test_a_schedule_that_does_not_fit_the_calls_steps_is_an_error_when_resolved(spec, n, match):
    schedule = Schedule.parse(spec)
    timesteps = [1000.0 * (1 - j / n) for j in range(n)]
    if match is None:
        schedule.plan(timesteps, 1000)
        return
    with pytest.raises(ValueError, match=match):
        schedule.plan(timesteps, 1000)


def d_with_s(s_values, start=0.5):
    d = [None, start]
    for s in s_values:
        d.append(d[-1] - s)
    return d


def follow(plan, d):
    """Ask the plan step by step, feeding d after each step, as the router does."""
    roles = []
    for j in range(plan.num_steps):
        roles.append(plan.role_at(j))
        plan.observe(j, d[j] if plan.needs_metric() else None)
    return roles


def test_the_adaptive_end_is_srdiffusions_rule_and_the_one_switch_form_is_a_schedule():
    n = 20
    d = d_with_s([0.05, 0.04, 0.03, 0.005, 0.001] + [0.001] * 20)  # s_5 = 0.005 in (0, 0.01): switch before 6
    timesteps = [1000.0 * (1 - j / n) for j in range(n)]
    for schedule in (Schedule.parse("large:delta,small"), Schedule.one_switch()):
        plan = schedule.plan(timesteps, 1000)
        roles = follow(plan, d[:n])
        assert segments_of(roles) == [Segment("large", 0, 6), Segment("small", 6, n)]
        b = plan.handover
        assert (b.step, b.reason, b.min_switch_step, b.max_switch_step, b.delta) == (6, "delta", 3, 12, 0.01)
        assert plan.boundaries == [b]
    # In a sandwich the adaptive hand-off leaves the following small segment at least one step.
    plan = Schedule.parse("large:delta=1e-9,small:8,large").plan(timesteps, 1000)  # the rule alone never fires
    roles = follow(plan, d[:n])
    assert segments_of(roles) == [Segment("large", 0, 7), Segment("small", 7, 8), Segment("large", 8, n)]
    assert [(b.step, b.reason, b.leaving, b.entering) for b in plan.boundaries] == [
        (7, "max_switch_step", "large", "small"),
        (8, "fixed", "small", "large"),
    ]
    # Its clamps, as apply's min_switch_step / max_switch_step.
    bounded = Schedule.parse("large:delta,small").with_bounds(8, 9)
    assert follow(bounded.plan(timesteps, 1000), d[:n]).index("small") == 8
    with pytest.raises(ValueError, match="has none"):
        Schedule.parse("small:3,large").with_bounds(4, None)
    with pytest.raises(ValueError, match="greater than"):
        Schedule.parse("large:delta,small").with_bounds(9, 4)


def test_the_one_switch_keywords_are_the_schedules_they_stand_for():
    timesteps = [1000.0 * (1 - j / 6) for j in range(6)]
    assert Schedule.one_switch(switch_step=0).parts == Schedule.parse("small").parts
    assert Schedule.one_switch(switch_step=2).parts == Schedule.parse("large:2,small").parts
    assert Schedule.one_switch(delta=0.02).parts == Schedule.parse("large:delta=0.02,small").parts
    for k, expected in ((0, ["small"] * 6), (2, ["large"] * 2 + ["small"] * 4)):
        plan = Schedule.one_switch(switch_step=k).plan(timesteps, 1000)
        assert follow(plan, [None] * 6) == expected
        assert [(b.step, b.reason, b.min_switch_step, b.delta) for b in plan.boundaries] == (
            [] if k == 0 else [(k, "fixed", k, None)]
        )
    for k in (6, 60):  # "large:6,small" does not fit a call of 6 steps: refused in the keyword's words
        with pytest.raises(
            ValueError, match=f"switch_step={k} hands over to the small model at step {k}, but this call has 6 steps"
        ):
            Schedule.one_switch(switch_step=k).plan(timesteps, 1000)


def test_only_an_adaptive_end_may_find_the_call_too_short_and_the_plan_says_so():
    timesteps = [1000.0 * (1 - j / 3) for j in range(3)]
    plan = Schedule.one_switch().plan(timesteps, 1000)
    assert follow(plan, [None, 0.5, 0.49]) == ["large"] * 3 and plan.handover is None
    assert "adaptive hand-off ('delta') comes at step 3 at the earliest" in plan.warning
    assert Schedule.one_switch().plan([1000.0 * (1 - j / 10) for j in range(10)], 1000).warning is None


def test_a_pipeline_that_cannot_run_its_large_model_late_caps_or_refuses():
    timesteps = [1000.0 * (1 - j / 10) for j in range(10)]
    plan = Schedule.parse("large:delta,small").plan(timesteps, 1000, large_until=(4, "no low-noise expert"))
    assert follow(plan, [None, 0.5, 0.495, 0.4, 0.3, 0.2, 0.1, 0.05, 0.04, 0.03]).index("small") == 3  # s_2 0.005
    plan = Schedule.parse("large:delta=1e-9,small").plan(timesteps, 1000, large_until=(4, "no low-noise expert"))
    assert follow(plan, [None] * 10).index("small") == 4
    with pytest.raises(ValueError, match=r"up to step 6.*from step 4 on \(no low-noise expert\)"):
        Schedule.parse("small:3,large:7,small").plan(timesteps, 1000, large_until=(4, "no low-noise expert"))
    with pytest.raises(ValueError, match="switch_step=6 is after step 4"):
        Schedule.one_switch(switch_step=6).plan(timesteps, 1000, large_until=(4, "why"))


def test_steps_are_decided_in_order_and_the_next_return_is_known_ahead():
    timesteps = [1000.0 * (1 - j / 10) for j in range(10)]
    plan = Schedule.parse("large:2,small:8,large").plan(timesteps, 1000)
    with pytest.raises(ValueError, match="in order"):
        plan.role_at(3)
    assert [plan.role_at(j) for j in range(3)] == ["large", "large", "small"]
    assert plan.next_start("large", 2) == 8
    assert Schedule.parse("large:delta,small").plan(timesteps, 1000).next_start("large", 0) is None


def test_the_ideal_speedup_generalises_srdiffusions_bound():
    r, n = 7.43, 50
    for k in (10, 20, 30):
        assert ideal_speedup(roles_of(f"large:{k},small", n), r) == pytest.approx(n / (k + (n - k) / r))
    assert ideal_speedup(roles_of("small:20,large", n), r) == pytest.approx(n / (30 + 20 / r))
    assert ideal_speedup(roles_of("large:10,small:35,large", n), r) == pytest.approx(n / (25 + 25 / r))
    with pytest.raises(ValueError, match="adaptive"):
        roles_of("large:delta,small", n)


def test_end_objects_are_accepted_as_written():
    schedule = Schedule.parse([("large", StepEnd(4)), ("small", FractionEnd(0.5)), ("large", None)])
    assert str(schedule) == "large:4,small:50%,large"


def test_schedule_module_imports_neither_torch_nor_diffusers():
    tree = ast.parse(pathlib.Path(schedule_module.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {
        (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
    }
    assert not imported & {"torch", "diffusers", "numpy", "transformers"}
