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


def candidates_of(args: Any) -> Any:
    """The candidates the arguments ask for: a grid or --schedules, each with every acceleration set-up."""
    from ..calibration import Candidate, candidate_grid

    accelerations: list[dict[str, Any]] = [{}]
    for threshold in args.teacache or []:
        accelerations.append({"teacache": threshold, **({"pab": True} if args.pab else {})})
    if args.pab and not args.teacache:
        accelerations.append({"pab": True})
    if args.schedules:
        candidates: Any = [Candidate(s, dict(a)) for a in accelerations for s in args.schedules]
        return candidates + [Candidate(None, dict(a)) for a in accelerations if a]
    return candidate_grid(args.grid, accelerations)


def run_calibrate(args: Any, say: Any = print) -> Any:
    """`sr-plugin calibrate` with the parsed arguments (`main.Calibrate`)."""
    from ..calibration import Floor, calibrate, confirm, new_seeds
    from ..calibration.search import checked_pairs, plan_text

    record = check_output(args.json, (".json",)) if args.json else None
    picture = check_output(args.plot, (".png",)) if args.plot else None
    candidates = candidates_of(args)
    family = args.family or "wan"
    if args.large is None:  # a trained family: its validation pairs and its judge
        chosen_pairs: list[Any] = task.validation(args.pairs)
    elif not args.prompt:
        raise UserError("--large/--small need the prompts to calibrate on: give --prompt (one or more)")
    else:
        chosen_pairs = list(args.prompt)
    if args.step_times is not None:  # planning: the cost, and nothing run
        say(
            f"sr-plugin calibrate: {len(candidates)} candidates on {len(checked_pairs(chosen_pairs, 0))} pairs, "
            f"{args.steps} steps, at {args.step_times[0]:g} s a large step and {args.step_times[1]:g} s a small one: "
            + plan_text(
                candidates,
                len(chosen_pairs),
                args.steps,
                {"large": args.step_times[0], "small": args.step_times[1]},
                True,
            )
        )
        return None
    if args.large is None:
        pipe, small_model, extra = trained.load(family)
        call: dict[str, Any] = dict(trained.CALL, guidance_scale=trained.GUIDANCE[family])
        scorer: Any = lambda video, prompt: evaluate.score_video(video, prompt).right  # noqa: E731
        floor = Floor(points=args.tolerance)
    else:
        from ..lab import call_defaults
        from .generate import load_models

        pipe, small_model, family, _, extra = load_models(args.large, args.small, args.family)
        defaults = call_defaults.read(args.large) if pathlib.Path(args.large).is_dir() else {}
        call = {k: v for k, v in defaults.items() if k != "fps"}
        scorer = None
        floor = Floor(min_ssim=args.min_ssim if args.min_ssim is not None else 0.9)
    report = calibrate(
        pipe,
        small_model,
        chosen_pairs,
        floor=floor,
        scorer=scorer,
        candidates=candidates,
        num_inference_steps=args.steps,
        apply_kwargs=extra,
        search=args.search,
        save_to=record,
        resume=args.resume,
        say=say,
        **call,
    )
    say("")
    say(report.table())
    say(report.summary())
    if args.confirm and report.chosen is not None:
        say("")
        report.confirmation = confirm(
            pipe,
            small_model,
            report,
            new_seeds(report.pairs),
            scorer=scorer,
            num_inference_steps=args.steps,
            apply_kwargs=extra,
            say=say,
            **call,
        )
        say(report.confirmation.table())
        say("confirmed on new pairs: " + report.confirmation.summary())
    if record is not None:
        write_checked(record, lambda: report.to_json(record))
        say(f"wrote {record}")
    if picture is not None:
        write_checked(
            picture,
            lambda: report.plot(
                picture, f"{family}: {len(report.rows) - 1} candidates on {len(report.pairs)} pairs, {args.steps} steps"
            ),
        )
        say(f"wrote {picture}")
    return report
