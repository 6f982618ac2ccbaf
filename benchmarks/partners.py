"""The trained families' small partners measured the way the method's sources measure a pair (docs/method.md,
"Cooperation schedules"): step costs, each model alone, the velocity divergence along large-only trajectories,
and SRDiffusion's perturbation windows; for the shipped (competent) small model and the weak one of the first
release.

    python benchmarks/partners.py --family wan                 # every stage; about 15 minutes on a 2-core CPU
    python benchmarks/partners.py --family cogvideox --stages costs alone
    python benchmarks/partners.py --plot                       # docs/partners_divergence.png from the reports

Stages:
  costs         seconds per pipeline step (CFG included, 50 steps, text encoding and decoding excluded) of the
                large model and of each small model, interleaved round by round, median over rounds: the cost ratio
  alone         each model alone on the held-out pairs: prompts and attributes right
  divergence    per step, mean |g_large - g_small| / mean |g_large| of the guided velocities along large-only
                trajectories (`sr_plugin.calibration.pair.divergence_profile`)
  perturbation  one window of 10 steps handed to the small model early, in the middle, late: prompts and
                attributes right (the composition) and PSNR / SSIM against large only (the pixels)

Seeded (the held-out pairs of `sr_plugin.lab.task`); one torch thread; results in
``benchmarks/results/partners_<family>_cpu_<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import time
from typing import Any

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PARTNERS = ("competent", "weak")
STAGES = ("costs", "alone", "divergence", "perturbation")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def stage_costs(family: str, rounds: int, steps: int) -> dict[str, Any]:
    from sr_plugin.lab import trained
    from sr_plugin.lab.quality import generate_video

    # each model in its own pipeline folder (the small folders are whole pipelines, as the hub's are): the models'
    # own step costs, without the switch's per-step work
    pipes = {
        p: trained.load_folders(
            trained.folder(family, trained.SMALL_MODELS[p]), trained.folder(family, trained.SMALL_MODELS[p])
        )[0]
        for p in PARTNERS
    }
    large, _, _ = trained.load(family)
    prompt, seed = ("a red square moving left and a blue circle moving up", 0)
    times: dict[str, list[float]] = {"large": [], **{p: [] for p in PARTNERS}}
    for r in range(rounds + 1):
        for name, pipe in (("large", large), *pipes.items()):
            seconds = generate_video(pipe, family, prompt, seed, steps)[1] / steps
            if r:  # the first round warms up
                times[name].append(seconds)
    per_step = {name: statistics.median(values) for name, values in times.items()}
    out = {
        "seconds_per_step": per_step,
        "rounds": rounds,
        "steps": steps,
        "ratio": {p: per_step["large"] / per_step[p] for p in PARTNERS},
    }
    say(
        f"{family} costs: "
        + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in per_step.items())
        + "; large / small "
        + ", ".join(f"{p} {v:.2f}x" for p, v in out["ratio"].items())
    )
    return out


def stage_alone(family: str, pairs: list[tuple[str, int]], steps: int) -> dict[str, Any]:
    from sr_plugin import apply
    from sr_plugin.lab import evaluate, trained
    from sr_plugin.lab.quality import generate_video

    out = {}
    for name in ("large", *PARTNERS):
        pipe, small, extra = trained.load(family, small="competent" if name == "large" else name)
        handle = None if name == "large" else apply(pipe, small, switch_step=0, **extra)
        scores = [evaluate.score_video(generate_video(pipe, family, p, s, steps)[0], p) for p, s in pairs]
        if handle is not None:
            handle.remove()
        summary = evaluate.summarize(scores)
        out[name] = {**summary, "right": [sc.right for sc in scores]}
        say(
            f"{family} {name} alone: {summary['prompt_accuracy']:.1f}% of prompts, "
            f"{summary['attribute_accuracy']:.1f}% of attributes"
        )
    return out


def stage_divergence(family: str, pairs: list[tuple[str, int]], steps: int) -> dict[str, Any]:
    from sr_plugin.calibration.pair import divergence_profile
    from sr_plugin.lab import trained

    out = {}
    for partner in PARTNERS:
        pipe, small, extra = trained.load(family, small=partner)
        profile = divergence_profile(
            pipe,
            small,
            pairs,
            num_inference_steps=steps,
            guidance_scale=trained.GUIDANCE[family],
            apply_kwargs=extra,
            **trained.CALL,
        )
        out[partner] = profile.as_dict()
        m = profile.mean
        say(
            f"{family} {partner} divergence at steps 0/10/20/30/40/49: "
            + " / ".join(f"{m[j]:.3f}" for j in (0, 10, 20, 30, 40, steps - 1))
        )
    return out


def stage_perturbation(family: str, pairs: list[tuple[str, int]], steps: int, width: int) -> dict[str, Any]:
    from sr_plugin.calibration.pair import perturbation, windows
    from sr_plugin.lab import evaluate, trained

    def prompts_right(video: Any, prompt: str) -> float:
        return float(evaluate.score_video(video, prompt).right)

    def attributes_right(video: Any, prompt: str) -> float:
        right, asked = evaluate.score_video(video, prompt).attributes
        return right / asked

    out = {}
    for partner in PARTNERS:
        pipe, small, extra = trained.load(family, small=partner)
        rows = perturbation(
            pipe,
            small,
            pairs,
            windows(steps, width),
            measures={"prompts right": prompts_right, "attributes right": attributes_right},
            num_inference_steps=steps,
            apply_kwargs=extra,
            say=say,
            guidance_scale=trained.GUIDANCE[family],
            **trained.CALL,
        )
        out[partner] = [
            {"window": r.window, "schedule": r.schedule, **r.measures, "psnr": r.psnr, "ssim": r.ssim} for r in rows
        ]
    return out


def markdown(family: str, data: dict[str, Any]) -> str:
    lines = [f"# {family}: the small partners ({data['date']}, {data['machine']})", ""]
    if "costs" in data:
        c = data["costs"]
        lines += ["| model | ms per pipeline step (CFG, median) | large / this |", "|---|---|---|"]
        lines += [
            f"| {k} | {v * 1e3:.2f} | {c['seconds_per_step']['large'] / v:.2f}x |"
            for k, v in c["seconds_per_step"].items()
        ]
        lines.append("")
    if "alone" in data:
        lines += ["| model alone | prompts right | attributes right |", "|---|---|---|"]
        lines += [
            f"| {k} | {v['prompt_accuracy']:.1f}% | {v['attribute_accuracy']:.1f}% |" for k, v in data["alone"].items()
        ]
        lines.append("")
    if "divergence" in data:
        cols = [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 49]
        lines += ["| partner | " + " | ".join(f"step {j}" for j in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for partner, prof in data["divergence"].items():
            lines.append(f"| {partner} | " + " | ".join(f"{prof['mean'][j]:.2f}" for j in cols) + " |")
        lines.append("")
    if "perturbation" in data:
        lines += [
            "| partner | window (schedule) | prompts right | attributes right | PSNR (dB) | SSIM |",
            "|---|---|---|---|---|---|",
        ]
        for partner, rows in data["perturbation"].items():
            for r in rows:
                fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
                lines.append(
                    f"| {partner} | {r['window']} ({r['schedule'] or 'large only'}) | "
                    f"{100 * r['prompts right']:.1f}% | {100 * r['attributes right']:.1f}% | "
                    f"{fmt(r['psnr'], '.2f')} | {fmt(r['ssim'], '.3f')} |"
                )
    return "\n".join(lines) + "\n"


def plot(out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, family in zip(axes, ("wan", "cogvideox")):
        found = sorted(RESULTS.glob(f"partners_{family}_cpu_*.json"))
        if not found:
            continue
        data = json.loads(found[-1].read_text())
        for partner, prof in data.get("divergence", {}).items():
            ax.plot(prof["mean"], label=f"{partner} small")
        ax.set_title(f"{family}: small against large along large-only trajectories")
        ax.set_xlabel("step of 50")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("mean |g_large - g_small| / mean |g_large|")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("wan", "cogvideox"))
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--pairs", type=int, default=64, help="held-out pairs of the alone stage")
    parser.add_argument("--divergence-pairs", type=int, default=16)
    parser.add_argument("--perturbation-pairs", type=int, default=32)
    parser.add_argument("--width", type=int, default=10, help="steps of each perturbation window")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds of the costs stage")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--plot", action="store_true", help="draw docs/partners_divergence.png and stop")
    args = parser.parse_args()
    if args.plot:
        plot(ROOT / "docs" / "partners_divergence.png")
        return
    if args.family is None:
        parser.error("--family is needed (or --plot)")
    import platform

    from sr_plugin.lab import task

    torch.set_num_threads(1)
    held_out = task.held_out()
    data: dict[str, Any] = {
        "family": args.family,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, 1 torch thread, torch {torch.__version__}",
    }
    if "costs" in args.stages:
        data["costs"] = stage_costs(args.family, args.rounds, args.steps)
    if "alone" in args.stages:
        data["alone"] = stage_alone(args.family, held_out[: args.pairs], args.steps)
    if "divergence" in args.stages:
        data["divergence"] = stage_divergence(args.family, held_out[: args.divergence_pairs], args.steps)
    if "perturbation" in args.stages:
        data["perturbation"] = stage_perturbation(
            args.family, held_out[: args.perturbation_pairs], args.steps, args.width
        )
    stem = RESULTS / f"partners_{args.family}_cpu_{data['date']}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1, default=float) + "\n")
    stem.with_suffix(".md").write_text(markdown(args.family, data))
    print(markdown(args.family, data))


if __name__ == "__main__":
    main()
