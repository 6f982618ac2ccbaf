"""The demo's GIF shows, per family, the first held-out prompt where the switch does what it is for (large only
and SR right, small only wrong); where no prompt does, the first where large only is right, else the first."""

from __future__ import annotations

from types import SimpleNamespace

from sr_plugin.cli.demo import showcase
from sr_plugin.lab.quality import FamilyResult


def run(prompt: str, mode: str, right: bool) -> SimpleNamespace:
    return SimpleNamespace(prompt=prompt, seed=1, mode=mode, score=SimpleNamespace(right=right))


def test_the_showcase_is_the_first_prompt_where_large_and_sr_are_right_and_small_is_wrong():
    result = FamilyResult("wan", 50, None)
    for prompt, (large, sr, small) in (
        ("p1", (True, False, False)),
        ("p2", (True, True, True)),
        ("p3", (True, True, False)),
        ("p4", (True, True, False)),
    ):
        result.runs += [run(prompt, "large", large), run(prompt, "sr", sr), run(prompt, "small", small)]
    assert showcase(result) == ("p3", 1)
    result.runs = [r for r in result.runs if r.prompt in ("p1", "p2")]
    assert showcase(result) == ("p1", 1)


def test_without_such_a_prompt_the_showcase_is_the_first_where_large_only_is_right():
    result = FamilyResult("wan", 50, None)
    for prompt, (large, sr, small) in (
        ("p1", (False, False, False)),
        ("p2", (True, False, False)),
        ("p3", (True, False, False)),
    ):
        result.runs += [run(prompt, "large", large), run(prompt, "sr", sr), run(prompt, "small", small)]
    assert showcase(result) == ("p2", 1)
    result.runs = [r for r in result.runs if r.prompt == "p1"]
    assert showcase(result) == ("p1", 1)


def test_with_a_calibrated_schedule_the_showcase_is_where_it_and_large_only_are_right_and_small_only_is_not():
    result = FamilyResult("wan", 50, None, "small:20%,large")
    for prompt, (large, sr, schedule, small) in (
        ("p1", (True, True, False, False)),
        ("p2", (True, False, True, False)),
    ):
        result.runs += [
            run(prompt, "large", large),
            run(prompt, "sr", sr),
            run(prompt, "schedule", schedule),
            run(prompt, "small", small),
        ]
    assert showcase(result) == ("p2", 1)


def test_the_table_gives_one_statistic_the_median_and_each_speed_up_is_large_over_the_mode(monkeypatch):
    """A busy first run (15 s of large only) moves neither figure: the time column is the median, and the speed-up
    is large only's median over the mode's (their ratio, as the table reads)."""
    from sr_plugin.lab import quality

    result = FamilyResult("wan", 50, None)
    score = SimpleNamespace(right=True, attributes=(6, 6))
    for i, (large, small) in enumerate(((15.35, 0.3), (2.0, 0.5), (2.2, 0.55))):
        for mode, seconds in (("large", large), ("small", small)):
            result.runs.append(
                quality.Run(f"p{i}", i, mode, None, seconds, seconds, None, score, 30.0, 0.9, roles=[mode] * 50)
            )
    monkeypatch.setattr(
        quality.evaluate, "summarize", lambda s: {"prompt_accuracy": 100.0, "attribute_accuracy": 100.0}
    )
    quality.summarize_result(result)
    large, small = result.summaries["large"], result.summaries["small"]
    assert large.denoise_s == 2.2 and small.denoise_s == 0.5
    assert small.speedup == large.denoise_s / small.denoise_s == 4.4 and large.speedup == 1.0
