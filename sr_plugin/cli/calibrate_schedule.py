"""`sr-plugin calibrate`: the fastest cooperation within a quality floor of large only (`sr_plugin.calibrate`).

On a trained family (the default): its validation pairs (training prompts with seeds no training run used; the
held-out pairs stay for reporting), judged by the task's evaluator, floor in points of prompt accuracy. On your own
models (``--large``/``--small``): your prompts, judged by fidelity to large only's video (mean SSIM), floor
``--min-ssim``. Writes the report's table to the terminal, and a JSON report and a plot where asked.
"""

from __future__ import annotations

import pathlib
from typing import Any

from ..lab import evaluate, task, trained
from .outputs import UserError, check_output, write_checked


def run_calibrate(family: str | None, pairs: int, grid: str, schedules: list[str] | None, tolerance: float,
                  teacache: list[float] | None, pab: bool, steps: int, json_out: str | None, plot_out: str | None,
                  large: str | None = None, small: str | None = None, prompts: list[str] | None = None,
                  min_ssim: float | None = None, seed: int = 0, confirm_choice: bool = False, say: Any = print) -> Any:
    from ..calibration import Candidate, Floor, calibrate, candidate_grid, confirm, new_seeds
    from . import call_defaults
    from .generate import load_models

    record = check_output(json_out, (".json",)) if json_out else None
    picture = check_output(plot_out, (".png",)) if plot_out else None
    accelerations: list[dict[str, Any]] = [{}]
    for threshold in teacache or []:
        accelerations.append({"teacache": threshold, **({"pab": True} if pab else {})})
    if pab and not teacache:
        accelerations.append({"pab": True})
    if schedules:
        candidates: Any = [Candidate(s, dict(a)) for a in accelerations for s in schedules]
        candidates += [Candidate(None, dict(a)) for a in accelerations if a]
    else:
        candidates = candidate_grid(grid, accelerations)
    if large is None:  # a trained family: its validation pairs and its judge
        family = family or "wan"
        pipe, small_model, extra = trained.load(family)
        chosen_pairs: list[Any] = task.validation(pairs)
        call = dict(trained.CALL, guidance_scale=trained.GUIDANCE[family])
        scorer = lambda video, prompt: evaluate.score_video(video, prompt).right  # noqa: E731
        floor = Floor(points=tolerance)
    else:
        if not prompts:
            raise UserError("--large/--small need the prompts to calibrate on: give --prompt (one or more)")
        pipe, small_model, family, _, extra = load_models(large, small, family)
        chosen_pairs = list(prompts)
        defaults = call_defaults.read(large) if pathlib.Path(large).is_dir() else {}
        call = {k: v for k, v in defaults.items() if k != "fps"}
        scorer = None
        floor = Floor(min_ssim=min_ssim if min_ssim is not None else 0.9)
    report = calibrate(pipe, small_model, chosen_pairs, floor=floor, scorer=scorer, candidates=candidates,
                       num_inference_steps=steps, seed=seed, apply_kwargs=extra, say=say, **call)
    say("")
    say(report.table())
    say(report.summary())
    if confirm_choice and report.chosen is not None:
        say("")
        report.confirmation = confirm(pipe, small_model, report, new_seeds(report.pairs), scorer=scorer,
                                      num_inference_steps=steps, apply_kwargs=extra, say=say, **call)
        say(report.confirmation.table())
        say("confirmed on new pairs: " + report.confirmation.summary())
    if record is not None:
        write_checked(record, lambda: report.to_json(record))
        say(f"wrote {record}")
    if picture is not None:
        write_checked(picture, lambda: report.plot(picture, f"{family}: {len(report.rows) - 1} candidates on "
                                                            f"{len(report.pairs)} pairs, {steps} steps"))
        say(f"wrote {picture}")
    return report
