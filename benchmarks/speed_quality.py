"""The speed-quality benchmark on the shipped trained families (CPU); never part of the test run.

    python benchmarks/speed_quality.py                      # both families, 16 held-out pairs, 50 steps
    python benchmarks/speed_quality.py --family wan --prompts 4    # a quick look
    python benchmarks/speed_quality.py --prompts 12 --rows "sr k=40,sr k=30+teacache 0.2+pab"   # some rows
    python benchmarks/speed_quality.py --replot 2026-11-27         # redraw the plot from saved results
    python benchmarks/speed_quality.py --family wan --prompts 64 --rows "small,sr delta=0.01" \
        --schedule "small:20%,large" --schedule "large:10%,small:40%,large" --stack 0.1   # cooperation schedules

Writes ``benchmarks/results/speed_quality_<family>_cpu_<date>.json`` per family, a markdown table beside it,
and the Pareto plot ``docs/speed_quality.png``. Besides the rows (see `sr_plugin.lab.speed_quality`), the stacked
rows against SR alone and TeaCache alone, each the fastest within 3 points of large only (--accuracy: whole
prompts right by default, or attributes).
The delta calibration's check is `benchmarks/delta_check.py`.
One thread, as the quality runner: on a small shared CPU, thread scheduling noise swamps the differences.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]

import diffusers  # noqa: E402

from sr_plugin.lab import speed_quality as sq  # noqa: E402
from sr_plugin.lab import task, trained  # noqa: E402
from sr_plugin.lab.quality import generate_video  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_family(
    family: str,
    n_pairs: int,
    steps: int,
    only: list[str] | None = None,
    accuracy: str = "prompt_accuracy",
    schedules: list[str] | None = None,
    stack: list[float] | None = None,
) -> dict:
    from sr_plugin.pipeline.timing import StepClock

    pipe, small, extra = trained.load(family)
    plain, _, _ = trained.load(family)  # the paired large-only reference, never patched
    pairs = task.held_out()[:n_pairs]
    warm = task.training_prompts()[0]
    for p in (pipe, plain):  # first calls pay one-off costs: keep them out of every figure
        generate_video(p, family, warm, 0, steps)
    rows, reference = [], {}
    configs = sq.configs()
    if only:  # a subset of the rows; large only always runs first (every other row's fidelity reference)
        unknown = sorted(set(only) - {c.name for c in configs})
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; the rows are: {', '.join(c.name for c in configs)}")
        configs = [c for c in configs if c.kind == "large" or c.name in only]
    if schedules or stack:
        configs = [c for c in configs if c.kind == "large" or (only and c.name in only)]
        configs += sq.schedule_configs(schedules or [], stack or [])
    start = time.time()
    clock = StepClock().install(pipe)
    for i, config in enumerate(configs):
        row, outputs = sq.run_config(
            pipe,
            small,
            extra,
            family,
            config,
            pairs,
            steps,
            reference,
            warmup_prompt=warm if "compile" in config.accel else None,
            plain=plain,
            clock=clock,
        )
        if config.kind == "large":
            reference = {pair: video for pair, (video, _) in zip(pairs, outputs)}
        rows.append(row)
        log(
            f"{family} [{i + 1}/{len(configs)}] {row.name}: attribute {row.attribute_accuracy:.1f}%, prompt "
            f"{row.prompt_accuracy:.1f}%, speed-up {row.speedup:.2f}x ({(time.time() - start) / 60:.1f} min)"
        )
    clock.remove()
    sq.add_paired(rows)
    sq.add_modelled(rows)
    drift = rows[0].time_ratio  # large only against large only: the pairing's own noise
    log(f"{family}: large only against its paired large-only runs: {drift:.3f}")

    large = getattr(rows[0], accuracy)
    groups = [("stacked", ("sr+teacache+pab", "sr+all")), ("sr", ("sr", "sr fixed")), ("teacache", ("teacache",))]
    groups += [
        (kind, (kind,))
        for kind in dict.fromkeys(r.kind for r in rows)
        if kind not in ("large", "small", "sr", "sr fixed", "teacache", "sr+teacache+pab", "sr+all")
    ]
    best = {name: sq.fastest_within(rows, kinds, large, accuracy=accuracy) for name, kinds in groups}
    return {
        "family": family,
        "pairs": n_pairs,
        "steps": steps,
        "accuracy": accuracy,
        "rows": [r.as_dict() for r in rows],
        "large_only_paired_ratio": drift,
        "within_tolerance": {k: (None if v is None else v.as_dict()) for k, v in best.items()},
        "_rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, action="append")
    parser.add_argument("--prompts", type=int, default=16, help="held-out (prompt, seed) pairs")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--plot", type=pathlib.Path, default=ROOT / "docs" / "speed_quality.png")
    parser.add_argument(
        "--rows",
        type=lambda v: [r.strip() for r in v.split(",") if r.strip()],
        default=None,
        help="comma-separated row names to run (with large only; no plot): "
        "results go to speed_quality_<family>_rows_cpu_<date>.*",
    )
    parser.add_argument(
        "--schedule",
        action="append",
        default=None,
        metavar="SPEC",
        help="a cooperation schedule row (repeat it); with --rows or --stack, only those rows and "
        "these run beside large only; results go to speed_quality_<family>_rows_cpu_<date>.*",
    )
    parser.add_argument(
        "--stack",
        type=float,
        action="append",
        default=None,
        metavar="THRESHOLD",
        help="also TeaCache at this threshold alone, with PAB, and each --schedule with both",
    )
    parser.add_argument(
        "--accuracy",
        choices=sq.ACCURACIES,
        default="prompt_accuracy",
        help="what 'within 3 points of large only' is judged on (default: whole prompts right)",
    )
    parser.add_argument(
        "--replot",
        metavar="DATE",
        default=None,
        help="only redraw the plot from that date's results: the full run's rows, then any --rows run's rows not in it",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)  # before the run, not after it
    if args.replot:
        replot(args.out, args.replot, args.family or list(trained.FAMILY_NAMES), args.plot)
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    env = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": 1,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
    }
    date = datetime.date.today().isoformat()
    results = {}
    for family in args.family or list(trained.FAMILY_NAMES):
        result = run_family(family, args.prompts, args.steps, args.rows, args.accuracy, args.schedule, args.stack)
        rows = result.pop("_rows")
        results[family] = rows
        table = sq.format_rows(rows)
        subset = args.rows or args.schedule or args.stack
        stem = f"speed_quality_{family}{'_rows' if subset else ''}_cpu_{date}"
        (args.out / f"{stem}.json").write_text(json.dumps({"environment": env, **result}, indent=1))
        (args.out / f"{stem}.md").write_text(table + "\n")
        print(table)
        for key, row in result["within_tolerance"].items():
            found = "none" if row is None else f"{row['name']} at {row['speedup']:.2f}x"
            print(
                f"fastest {key} row within {sq.TOLERANCE_POINTS:g} points of large only's "
                f"{args.accuracy.replace('_', ' ')}: {found}"
            )
    if not (args.rows or args.schedule or args.stack):
        sq.plot_pareto(results, args.plot)
        log(f"wrote {args.plot}")


def replot(folder: pathlib.Path, date: str, families: list[str], plot: pathlib.Path) -> None:
    fields = [f.name for f in dataclasses.fields(sq.Row)]
    results = {}
    for family in families:
        rows: dict[str, sq.Row] = {}
        for stem in (f"speed_quality_{family}_cpu_{date}", f"speed_quality_{family}_rows_cpu_{date}"):
            path = folder / f"{stem}.json"
            if path.exists():
                for r in json.loads(path.read_text())["rows"]:
                    rows.setdefault(r["name"], sq.Row(**{k: r[k] for k in fields}))
        if not rows:
            raise SystemExit(f"no results for {family} on {date} in {folder}")
        results[family] = list(rows.values())
    sq.plot_pareto(results, plot)
    log(f"wrote {plot}")


if __name__ == "__main__":
    main()
