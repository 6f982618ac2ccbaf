"""The main job: the trained families on held-out prompts, large only | SR | calibrated schedule | small only,
scored and timed.

Prints one line per prompt and a quality and time table per family, and writes one side-by-side GIF (a row per
family: large only | SR | the family's calibrated schedule | small only, captioned with the prompt and each clip's
attributes right). The calibrated schedule is the one `sr-plugin calibrate` found on the family's validation pairs
and shipped beside its weights (`trained.calibrated`).
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any

import numpy as np

from ..lab import task, trained
from ..lab.quality import FamilyResult, evaluate_family, format_table
from .outputs import check_output, write_checked

DEMO_PROMPTS = 6
#: Pixels per video pixel in the GIF (the videos are 32 x 32).
ZOOM = 4
LABELS = {"large": "large only", "sr": "SR", "schedule": "calibrated", "small": "small only"}


def _caption(image: Any, text: str, xy: tuple[int, int]) -> None:
    from PIL import ImageDraw

    ImageDraw.Draw(image).text(xy, text, fill=(235, 235, 235))


def showcase(result: FamilyResult) -> tuple[str, int]:
    """The (prompt, seed) a family's GIF row shows: the first where large only and the cooperation (the calibrated
    schedule if it ran, else SR) are right and small only is wrong (what the small model needs the large one for),
    else the first where large only is right (what the others are measured against), else the first prompt run."""
    by_pair: dict[tuple[str, int], dict[str, Any]] = {}
    for run in result.runs:
        by_pair.setdefault((run.prompt, run.seed), {})[run.mode] = run
    for pair, runs in by_pair.items():
        cooperation = runs.get("schedule", runs.get("sr"))
        if (
            {"large", "small"} <= set(runs)
            and cooperation is not None
            and runs["large"].score.right
            and cooperation.score.right
            and not runs["small"].score.right
        ):
            return pair
    for pair, runs in by_pair.items():
        if "large" in runs and runs["large"].score.right:
            return pair
    return result.runs[0].prompt, result.runs[0].seed


def side_by_side(results: list[FamilyResult]) -> list[np.ndarray]:
    """GIF frames: per family, one prompt's three clips side by side under their captions (`showcase`)."""
    from PIL import Image

    clip = task.WIDTH * ZOOM
    gap, head, label = 8, 16, 14
    modes = list(dict.fromkeys(r.mode for res in results for r in res.runs))
    width = len(modes) * clip + (len(modes) + 1) * gap
    row_h = head + label + clip + gap
    frames = []
    for f in range(task.NUM_FRAMES):
        canvas = Image.new("RGB", (max(width, 420), row_h * len(results) + gap), (40, 40, 40))
        for row, res in enumerate(results):
            shown = showcase(res)
            runs = {r.mode: r for r in res.runs if (r.prompt, r.seed) == shown}
            top = gap + row * row_h
            _caption(canvas, f'{res.family}: "{shown[0]}"', (gap, top))
            for col, mode in enumerate(modes):
                run = runs.get(mode)
                if run is None:
                    continue
                right, asked = run.score.attributes
                summary = res.summaries.get(mode)
                speed = f" {summary.speedup:.1f}x" if summary is not None and mode != "large" else ""
                left = gap + col * (clip + gap)
                _caption(canvas, f"{LABELS[mode]}{speed}: {right}/{asked}", (left, top + head))
                pixels = (np.clip(run.video[f], 0, 1) * 255).astype(np.uint8)
                tile = Image.fromarray(pixels).resize((clip, clip), Image.NEAREST)
                canvas.paste(tile, (left, top + head + label))
        frames.append(np.asarray(canvas))
    return frames


def write_gif(frames: list[np.ndarray], out: pathlib.Path, fps: int = 4) -> None:
    """Written to a temporary file in the same folder, then moved into place: never half-written."""
    import imageio.v2 as imageio

    fd, tmp = tempfile.mkstemp(suffix=".gif", dir=out.parent if str(out.parent) else ".")
    os.close(fd)
    try:
        imageio.mimsave(tmp, frames, format="GIF", duration=1000 / fps, loop=0)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates it private; the GIF is an ordinary output file
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


#: How far SR's measured speed-up may stand above the ideal its own step times allow before the timing is
#: called unreliable (single runs on a shared 2-core VM move by about 10%).
IDEAL_TOLERANCE = 0.15


def implausible_timing(result: FamilyResult) -> str | None:
    """A warning when the measured times contradict each other (SR faster than small only or slower than large
    only, well above the ideal the same runs' step times allow, or a large step cheaper than a small one): the
    machine was busy."""
    sr, small = result.summaries.get("sr"), result.summaries.get("small")
    if sr is None or small is None:
        return None
    problems = []
    if result.step_ratio is not None and result.step_ratio < 1:
        problems.append(f"a large step measured cheaper than a small one (r = {result.step_ratio:.2f})")
    if sr.speedup > small.speedup:
        problems.append(f"SR measured faster ({sr.speedup:.2f}x) than small only ({small.speedup:.2f}x)")
    if sr.speedup < 1 - IDEAL_TOLERANCE:
        problems.append(f"SR measured slower ({sr.speedup:.2f}x) than large only, though its small steps cost less")
    if sr.ideal_speedup is not None and sr.speedup > sr.ideal_speedup * (1 + IDEAL_TOLERANCE):
        problems.append(f"SR measured at {sr.speedup:.2f}x, above the {sr.ideal_speedup:.2f}x its switch steps allow")
    if not problems:
        return None
    return (
        "the timings are unreliable: " + "; ".join(problems) + ". The machine was busy during these runs; "
        "rerun on a quiet machine for speed figures (the accuracy figures do not depend on it)"
    )


def results_json(results: list[FamilyResult]) -> dict[str, Any]:
    """Every run's scores and times, the summaries, and the software and machine they came from."""
    import platform

    import diffusers
    import torch

    return {
        "environment": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "families": [
            {
                "family": r.family,
                "steps": r.steps,
                "delta": r.delta,
                "schedule": r.schedule,
                "step_ratio": r.step_ratio,
                "summaries": {m: s.as_dict() for m, s in r.summaries.items()},
                "runs": [
                    {
                        "prompt": x.prompt,
                        "seed": x.seed,
                        "mode": x.mode,
                        "right": x.score.right,
                        "attributes_right": x.score.attributes[0],
                        "psnr": x.psnr,
                        "ssim": x.ssim,
                        "denoise_s": x.denoise_s,
                        "total_s": x.total_s,
                        "switch_step": x.switch_step,
                        "switch_noise": x.switch_noise,
                        "score": x.score.as_dict(),
                    }
                    for x in r.runs
                ],
            }
            for r in results
        ],
    }


def run_demo(
    families: tuple[str, ...] = trained.FAMILY_NAMES,
    prompts: int = DEMO_PROMPTS,
    steps: int = 50,
    delta: float | None = None,
    out: str = "sr-plugin-demo.gif",
    json_out: str | None = None,
    say: Any = print,
    small: str = "competent",
) -> list[FamilyResult]:
    """Large only, SR, the calibrated schedule (where one is shipped, for the competent small model) and small only
    on the first ``prompts`` held-out pairs of each family."""
    for family in families:
        trained.check_family(family)
    if not 1 <= prompts <= task.HELD_OUT_SIZE:
        raise ValueError(f"prompts must be between 1 and {task.HELD_OUT_SIZE} (the held-out set), got {prompts}")
    gif = check_output(out, (".gif",))
    record = check_output(json_out, (".json",)) if json_out is not None else None
    pairs = task.held_out()[:prompts]
    say(
        f"sr-plugin demo: the trained families (sr_plugin/trained/) with their {small} small model on {prompts} "
        f"held-out prompt{'' if prompts == 1 else 's'}, {steps} steps, SR at "
        f"delta={delta if delta is not None else 0.01}; CPU"
    )
    results = []
    for family in families:
        shipped = trained.calibrated(family) if small == "competent" else None
        schedule = shipped["schedule"] if shipped else None
        if shipped:
            say(f"{family}: calibrated schedule {schedule} ({shipped['summary']})")
        results.append(evaluate_family(family, pairs, steps, delta, say=say, schedule=schedule, small=small))
    say("")
    say(format_table(results))
    for res in results:
        say(
            f"{res.family}: a large step costs r = {res.step_ratio:.2f} small steps here; ideal = "
            f"N / (k + (N - k) / r) at each prompt's switch step k"
        )
        warning = implausible_timing(res)
        if warning:
            say(f"{res.family}: {warning}")
    write_checked(gif, lambda: write_gif(side_by_side(results), gif))
    if record is not None:
        import json

        write_checked(record, lambda: record.write_text(json.dumps(results_json(results), indent=1, default=float)))
        say(f"wrote {record}")
    columns = " | ".join(LABELS[m] for m in dict.fromkeys(r.mode for res in results for r in res.runs))
    say(f"\nwrote {gif} ({columns}; each with its measured speed-up and the attributes right out of 6)")
    return results
