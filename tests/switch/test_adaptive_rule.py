"""The adaptive switching rule on synthetic d sequences: plain logic, no pipeline."""

from __future__ import annotations

import ast
import pathlib

import pytest

import sr_plugin.switch.policy as policy_module
from sr_plugin.switch.policy import AdaptiveBounds, AdaptiveDecider, decreases
from sr_plugin.switch.schedule import Schedule


def options(delta=0.01, min_switch_step=None, max_switch_step=None):
    return delta, min_switch_step, max_switch_step


def run_policy(opts, d: list[float | None], num_steps: int) -> tuple[int | None, list[bool]]:
    """Feed d_j after each step j as the plan does; return the switch step and who ran each step."""
    switch, reason = _reason(opts, d, num_steps)
    used = [switch is not None and j >= switch for j in range(num_steps)]
    return switch, used


def _reason(opts, d: list[float | None], num_steps: int) -> tuple[int | None, str | None]:
    decider = AdaptiveDecider(AdaptiveBounds.resolve(*opts, num_steps))
    for j in range(num_steps):
        reason = decider.decide(j)
        if reason is not None:
            return j, reason
        decider.observe(j, d[j])
    return None, None


def d_with_s(s_values: list[float], start: float = 0.5) -> list[float | None]:
    """A d sequence (d_0 undefined) whose successive decreases are exactly ``s_values`` (s_2, s_3, ...)."""
    d: list[float | None] = [None, start]
    for s in s_values:
        d.append(d[-1] - s)
    return d


def test_defaults_scale_with_the_run():
    sched = AdaptiveBounds.resolve(*options(), 50)
    assert (sched.min_step, sched.max_step, sched.delta) == (5, 30, 0.01)
    sched = AdaptiveBounds.resolve(*options(), 10)
    assert (sched.min_step, sched.max_step) == (3, 6)


def test_crossing_defaults_collapse_to_min_and_short_runs_never_switch():
    sched = AdaptiveBounds.resolve(*options(), 4)  # min 3, max floor(2.4) = 2 -> 3
    assert (sched.min_step, sched.max_step) == (3, 3)
    assert run_policy(options(), [None, 1.0, 0.9, 0.8], 4)[0] == 3
    for n in (0, 1, 2, 3):
        switch, used = run_policy(options(), [None, 0.5, 0.499, 0.498][:n], n)
        assert switch is None and not any(used)


def test_switches_at_first_step_whose_previous_s_is_in_the_window():
    # s_2 .. s_9; min 3 so s_2 is looked at before step 3. s_2, s_3 too large, s_4 negative, s_5 in (0, delta).
    s = [0.05, 0.02, -0.01, 0.004, 0.003, 0.002, 0.001, 0.0005]
    switch, used = run_policy(options(0.01, 3, 9), d_with_s(s), 10)
    assert switch == 6
    assert used == [False] * 6 + [True] * 4


@pytest.mark.parametrize("s_edge", [0.0, 0.01, -0.001])
def test_s_must_be_strictly_inside_zero_and_delta(s_edge):
    d = d_with_s([s_edge] * 8)
    assert run_policy(options(0.01, 3, 9), d, 10)[0] == 9


def test_s_equal_to_delta_does_not_switch():
    """s exactly delta, in binary-exact numbers (0.5 - 0.49 is not 0.01 in floats): the bound is exclusive."""
    delta = 2.0**-7
    d = d_with_s([delta] * 8)
    assert all(a - b == delta for a, b in zip(d[1:], d[2:]))
    assert run_policy(options(delta, 3, 9), d, 10)[0] == 9
    just_below = d_with_s([delta - 2.0**-20] * 8)
    assert run_policy(options(delta, 3, 9), just_below, 10)[0] == 3


def test_min_switch_step_holds_back_an_early_small_s():
    d = d_with_s([0.001] * 18)  # s is in the window from s_2 on
    assert run_policy(options(0.01, 7, 15), d, 20)[0] == 7
    assert run_policy(options(), d, 20)[0] == 3  # default min = max(3, ceil(2)) = 3


def test_max_switch_step_forces_the_switch():
    d = d_with_s([0.5] * 48)
    assert run_policy(options(), d, 50)[0] == 30


def test_switch_is_one_way():
    d = d_with_s([0.005, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    switch, used = run_policy(options(0.01, 3, 9), d, 10)
    assert switch == 3 and used == [False] * 3 + [True] * 7


def test_one_explicit_bound_wins_over_a_crossing_default():
    assert AdaptiveBounds.resolve(*options(0.01, 40, None), 50).max_step == 40
    sched = AdaptiveBounds.resolve(*options(0.01, None, 2), 50)
    assert (sched.min_step, sched.max_step) == (2, 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"delta": -0.1}, "delta"),
        ({"delta": 3}, "delta"),
        ({"delta": "0.01"}, "delta"),
        ({"delta": True}, "delta"),
        ({"min_switch_step": 10, "max_switch_step": 5}, "greater than"),
        ({"switch_step": -1}, "switch_step"),
        ({"min_switch_step": -2}, "min_switch_step"),
        ({"switch_step": 5, "delta": 0.02}, "fixed switch"),
        ({"switch_step": 5, "max_switch_step": 9}, "fixed"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Schedule.one_switch(**kwargs)


def test_step_must_be_an_int():
    with pytest.raises(TypeError, match="switch_step"):
        Schedule.one_switch(switch_step=2.5)


def test_observations_must_come_in_order():
    decider = AdaptiveDecider(AdaptiveBounds.resolve(*options(), 10))
    decider.observe(0, None)
    with pytest.raises(ValueError, match="step order"):
        decider.observe(2, 0.1)


def test_decreases_of_the_relative_change():
    assert decreases([None, 0.5, 0.3, None, 0.1]) == [None, None, pytest.approx(0.2), None, None]
    assert decreases([]) == []


def test_policy_module_imports_neither_torch_nor_diffusers():
    tree = ast.parse(pathlib.Path(policy_module.__file__).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "math", "numbers", "dataclasses"}, imported  # the standard library only


def test_the_policy_says_why_it_switched():
    # s_2 = 0.2, s_3 = 0.05, s_4 = 0.005 (< delta): the rule fires before step 5 = min_switch_step
    d = d_with_s([0.2, 0.05, 0.005, 0.001] + [0.001] * 50, start=0.9)
    assert _reason(options(0.01), d, 50) == (5, "delta")
    # the same sequence with a smaller delta never fires: the upper clamp does, at 30 for 50 steps
    assert _reason(options(1e-4), d, 50) == (30, "max_switch_step")
