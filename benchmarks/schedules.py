"""Cooperation schedules on the trained families: calibrate on the validation pairs, report on the held-out ones.

    python benchmarks/schedules.py --family wan --stage orders     # every order's grid (as `sr-plugin calibrate
                                                                   #   --grid full --pairs 64 --search grid`), 64
                                                                   #   validation pairs
    python benchmarks/schedules.py --family wan --stage fastest    # the same grid searched fastest first: its answer
                                                                   #   and cost against the orders report's
    python benchmarks/schedules.py --family wan --stage stacked    # multi-segment schedules and the best of each
                                                                   #   order, alone, with TeaCache, with TeaCache + PAB
    python benchmarks/schedules.py --family wan --stage restack --threshold 0.2   # those within the floor, stacked
                                                                   #   with TeaCache at another threshold
    python benchmarks/schedules.py --family wan --stage ship       # the fastest schedule within the floor that holds
                                                                   #   it again on new seeds, beside the weights
    python benchmarks/schedules.py --family wan --stage shipped    # the shipped schedule on the held-out pairs and a
                                                                   #   second seed of each (128 pairs)
    python benchmarks/schedules.py --family wan --stage confirm    # the table's rows on a second seed of each held-out
                                                                   #   prompt, and over both seeds (128 pairs)
    python benchmarks/schedules.py --family wan --stage table --threshold 0.1
        # the held-out table: large only, small only, SR,
                                                                   #   the best of each order, TeaCache, the stacks

Stage reports go to ``benchmarks/results/schedules_<stage>_<family>_cpu_<date>.{json,md}`` and the plot to
``docs/schedules_<stage>_<family>.png``; ``ship`` writes ``sr_plugin/trained/<family>/calibrated.json`` (read by the
demo) from the newest ``stacked`` report: its schedules without accelerations within the floor, fastest first,
rerun on the validation prompts with new seeds (`sr_plugin.calibration.confirm`) until one holds the floor again.
``table`` runs
`benchmarks/speed_quality.py`'s rows on the held-out pairs (paired timing against a plain copy of the pipeline, the
speed-up also modelled from step costs): large only, small only, SR at its default, the best schedule of each order
and the best of more than three segments from the two reports, TeaCache at ``STACKED`` alone and with PAB, and each
schedule with both; written to ``speed_quality_<family>_rows_cpu_<date>.*``. Settings are chosen on
validation pairs (training prompts with unused seeds) so that the held-out pairs stay for reporting them.
One torch thread: the speed model uses step costs, robust to a busy machine, but a quiet one is better.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import time
from typing import Any

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Schedules of more than three segments: the small model in several short stretches (on Wan, ten consecutive
#: small steps early or in the middle cost nothing measurable, twenty do).
MULTI = (
    "small:10%,large:20%,small:40%,large",
    "small:10%,large:20%,small:40%,large:50%,small:60%,large",
    "large:10%,small:20%,large:30%,small:40%,large:50%,small:60%,large",
    "small:10%,large:20%,small:30%,large:40%,small:50%,large",
    "large:20%,small:40%,large:50%,small:60%,large",
    "small:10%,large:30%,small:50%,large",
    "large:10%,small:30%,large:40%,small:60%,large",
    "small:20%,large:75%,small",
    "small:24%,large:80%,small",
    "small:20%,large:40%,small:50%,large:80%,small",
)
#: TeaCache alone at these thresholds (in units of the shipped calibration's rescaled change), and with PAB at the
#: stacked one; every schedule is also tried with TeaCache at the stacked threshold, alone and with PAB.
ALONE = (0.05, 0.1, 0.2)
STACKED = 0.1


def best_of_each_order(report: dict) -> list[str]:
    """The fastest (modelled) schedule within the floor of each order in an `orders` report (the closest to the
    floor where none holds it)."""
    rows = [r for r in report["rows"][1:] if r["schedule"] and r["order"] not in ("small only",)]
    out = []
    for order in dict.fromkeys(r["order"] for r in rows):
        mine = [r for r in rows if r["order"] == order]
        out.append(pick_fastest(mine)["schedule"])
    return out


def pick_fastest(rows: list[dict]) -> dict:
    """The calibration's own rule on report rows: the fastest within the floor (among those within 1% of it, the
    more accurate), else the closest to the floor."""
    within = [r for r in rows if r["within_floor"]]
    if not within:
        return min(rows, key=lambda r: (r["shortfall"], -r["modelled_speedup"]))
    fastest = max(r["modelled_speedup"] for r in within)
    return max(
        (r for r in within if r["modelled_speedup"] >= 0.99 * fastest),
        key=lambda r: (r["accuracy"] or 0.0, r["ssim"] or 0.0),
    )


def newest(folder: pathlib.Path, stem: str) -> pathlib.Path:
    found = sorted(folder.glob(f"{stem}_cpu_*.json"))
    if not found:
        raise SystemExit(f"no {stem} report in {folder}: run that stage first")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("wan", "cogvideox"), required=True)
    parser.add_argument(
        "--stage",
        required=True,
        choices=("orders", "fastest", "stacked", "ship", "shipped", "table", "restack", "confirm"),
    )
    parser.add_argument(
        "--search",
        choices=("grid", "fastest"),
        default="grid",
        help="orders, stacked, restack: every candidate on every pair (the table), or fastest first",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.2,
        help="restack and table: the TeaCache threshold stacked with the schedules (alone and with "
        "PAB); restack takes the stacked report's schedules within the floor",
    )
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tolerance", type=float, default=3.0)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    results = args.out
    if args.stage == "ship":
        ship(
            args.family,
            json.loads(newest(results, f"schedules_stacked_{args.family}").read_text()),
            results,
            args.steps,
        )
        return
    if args.stage == "shipped":
        shipped(args.family, results, args.steps, args.tolerance)
        return
    if args.stage == "table":
        table(args.family, results, args.pairs, args.steps, args.threshold)
        return
    import sr_plugin
    from sr_plugin.calibration import Candidate, Floor, candidate_grid
    from sr_plugin.lab import evaluate, task, trained

    torch.set_num_threads(1)
    pipe, small, extra = trained.load(args.family)
    if args.stage in ("orders", "fastest"):
        candidates = candidate_grid("full")
    else:
        orders = json.loads(newest(results, f"schedules_orders_{args.family}").read_text())
        schedules = list(dict.fromkeys(best_of_each_order(orders) + list(MULTI)))
        stacks = [{}, {"teacache": STACKED}, {"teacache": STACKED, "pab": True}]
        candidates = [Candidate(None, {"teacache": t}) for t in ALONE]
        candidates.append(Candidate(None, {"teacache": STACKED, "pab": True}))
        candidates += [Candidate(s, a) for a in stacks for s in schedules]
    if args.stage == "confirm":  # the held-out table's rows again on a second seed of every held-out prompt
        rows = json.loads(newest(results, f"speed_quality_{args.family}_rows").read_text())["rows"]
        candidates = [candidate_of(r["name"]) for r in rows[1:] if r["name"] != "small"]
        pairs = [(p, seed + CONFIRM_SEED_OFFSET) for p, seed in task.held_out()[: args.pairs]]
    else:
        pairs = task.validation(args.pairs)
    if args.stage == "restack":  # the schedules that held the floor alone, stacked at another threshold
        stacked = json.loads(newest(results, f"schedules_stacked_{args.family}").read_text())
        schedules = [
            r["schedule"]
            for r in stacked["rows"][1:]
            if r["schedule"] and not r["accel"] and r["within_floor"] and r["order"] != "small only"
        ]
        t = args.threshold
        candidates = [Candidate(None, {"teacache": t}), Candidate(None, {"teacache": t, "pab": True})]
        candidates += [Candidate(s, a) for a in ({"teacache": t}, {"teacache": t, "pab": True}) for s in schedules]
    report = sr_plugin.calibrate(
        pipe,
        small,
        pairs,
        floor=Floor(points=args.tolerance),
        scorer=lambda video, prompt: evaluate.score_video(video, prompt).right,
        candidates=candidates,
        num_inference_steps=args.steps,
        apply_kwargs=extra,
        search="fastest" if args.stage == "fastest" else args.search,
        say=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True),
        **trained.CALL,
        guidance_scale=trained.GUIDANCE[args.family],
    )
    stage = args.stage if args.stage != "restack" else f"restack{args.threshold:g}"
    if args.stage == "fastest":  # against the grid's answer and cost on the same pairs
        grid = json.loads(newest(results, f"schedules_orders_{args.family}").read_text())
        comparison = search_cost(grid, report, args.steps)
        (results / f"schedules_search_{args.family}_cpu_{datetime.date.today().isoformat()}.md").write_text(
            comparison + "\n"
        )
        print(comparison)
    stem = f"schedules_{stage}_{args.family}_cpu_{datetime.date.today().isoformat()}"
    results.mkdir(parents=True, exist_ok=True)
    report.progress = None  # the per-step record of every run (tens of MB) is for resuming, not for the results
    report.to_json(results / f"{stem}.json")
    (results / f"{stem}.md").write_text(report.table() + "\n\n" + report.summary() + "\n")
    report.plot(
        ROOT / "docs" / f"schedules_{stage}_{args.family}.png",
        f"{args.family}: {len(report.rows) - 1} candidates on {len(report.pairs)} validation pairs",
    )
    print(report.table())
    print(report.summary())
    if args.stage == "confirm":
        combined = combine(rows, report)
        (results / f"{stem}_combined.md").write_text(combined + "\n")
        print(combined)


def search_cost(grid: dict, fastest: Any, steps: int) -> str:
    """The grid search and the fastest-first one on the same pairs: their answers, and the model steps and time
    each spent; the grid without the prefix replay counted from its rows' roles."""
    pairs = len(grid["pairs"])
    plain = {"large": 0.0, "small": 0.0}
    for row in grid["rows"]:
        plain["small"] += row["small_share"] * steps * pairs
        plain["large"] += (1 - row["small_share"]) * steps * pairs
    g, f = grid["cost"], fastest.cost
    lines = [
        "| search | answer | large steps | small steps | replayed steps | videos | minutes |",
        "|---|---|---|---|---|---|---|",
        f"| grid, every step computed (counted) | {grid['chosen'] or 'none'} | {plain['large']:,.0f} | "
        f"{plain['small']:,.0f} | 0 | {len(grid['rows']) * pairs} | - |",
        f"| grid with prefix replay | {grid['chosen'] or 'none'} | {g['computed']['large']:,} | "
        f"{g['computed']['small']:,} | {sum(g['replayed'].values()):,} | {g['videos']} | {g['seconds'] / 60:.1f} |",
        f"| fastest first with prefix replay | {fastest.chosen.name if fastest.chosen else 'none'} | "
        f"{f.computed['large']:,} | {f.computed['small']:,} | {sum(f.replayed.values()):,} | {f.videos} | "
        f"{f.seconds / 60:.1f} |",
        "",
        f"fastest first spends {f.computed['large'] / plain['large']:.0%} of the plain grid's large-model steps "
        f"({f.computed['large'] / max(g['computed']['large'], 1):.0%} of the replaying grid's); "
        f"same answer: {(fastest.chosen.name if fastest.chosen else None) == grid['chosen']}",
    ]
    return "\n".join(lines)


#: Seeds of the confirming pairs: the held-out prompts' own seeds plus this (no training or held-out run used them).
CONFIRM_SEED_OFFSET = 500_000


def candidate_of(row_name: str) -> Any:
    """The calibration candidate of a speed-quality row name ("small:20%,large+teacache 0.1+pab", "teacache 0.1")."""
    from sr_plugin.calibration import Candidate

    parts = row_name.split("+")
    schedule = None if parts[0].startswith("teacache") else parts[0]
    accel: dict = {}
    for part in parts[0 if schedule is None else 1 :]:
        if part.startswith("teacache"):
            accel["teacache"] = float(part.split()[1])
        elif part == "pab":
            accel["pab"] = True
    if schedule is not None and schedule.startswith("sr delta="):  # SRDiffusion's rule at that delta
        delta = schedule.removeprefix("sr delta=")
        schedule = "large:delta,small" if delta == "0.01" else f"large:delta={delta},small"
    return Candidate(schedule, accel)


def combine(table_rows: list[dict], report: Any) -> str:
    """Each held-out row over both seeds (128 pairs): lost and gained against large only, and McNemar's exact test."""
    from sr_plugin.calibration import paired

    first = {candidate_of(r["name"]).name: r["right"] for r in table_rows[1:]}
    reference = table_rows[0]["right"] + report.reference.right
    lines = [
        "| row | prompts right (128 pairs) | lost / gained | McNemar p | points against large only |",
        "|---|---|---|---|---|",
        f"| large | {100 * sum(reference) / len(reference):.1f}% | - | - | - |",
    ]
    for row in report.rows[1:]:
        if row.name not in first:  # small only: the calibration's own reference run, not a table row here
            continue
        right = first[row.name] + row.right
        p = paired(reference, right)
        lines.append(
            f"| {row.name} | {100 * sum(right) / len(right):.1f}% | {p.lost} / {p.gained} | {p.p_value:.3f} "
            f"| {p.points:+.1f} |"
        )
    return "\n".join(lines)


def table_schedules(family: str, results: pathlib.Path) -> list[str]:
    """The best schedule of each order (the orders report) and the best of more than three segments (the stacked
    report's, without accelerations), each the fastest within the floor or else the closest."""
    orders = best_of_each_order(json.loads(newest(results, f"schedules_orders_{family}").read_text()))
    stacked = json.loads(newest(results, f"schedules_stacked_{family}").read_text())
    multi = [r for r in stacked["rows"][1:] if r["schedule"] and not r["accel"] and r["schedule"].count(",") >= 3]
    return orders + [pick_fastest(multi)["schedule"]]


def table(family: str, results: pathlib.Path, pairs: int, steps: int, threshold: float) -> None:
    import subprocess
    import sys

    from sr_plugin.lab.speed_quality import DELTAS

    schedules = table_schedules(family, results)
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "speed_quality.py"),
        "--family",
        family,
        "--prompts",
        str(pairs),
        "--steps",
        str(steps),
        "--out",
        str(results),
        "--rows",
        ",".join(["small"] + [f"sr delta={d}" for d in DELTAS]),  # SRDiffusion's default and a decade around it
        "--stack",
        str(threshold),
    ] + [a for s in schedules for a in ("--schedule", s)]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


def shipped(family: str, results: pathlib.Path, steps: int, tolerance: float) -> None:
    """The shipped schedule on the held-out pairs and on a second seed of each (128 pairs), against large only."""
    import sr_plugin
    from sr_plugin.calibration import Floor, new_seeds
    from sr_plugin.lab import evaluate, task, trained

    torch.set_num_threads(1)
    record = json.loads((ROOT / "sr_plugin" / "trained" / family / "calibrated.json").read_text())
    pipe, small, extra = trained.load(family)
    pairs = task.held_out() + new_seeds(task.held_out(), CONFIRM_SEED_OFFSET)
    report = sr_plugin.calibrate(  # every pair, for the figures (no early drop)
        pipe,
        small,
        pairs,
        candidates=[record["schedule"]],
        search="grid",
        floor=Floor(points=tolerance),
        scorer=lambda video, prompt: evaluate.score_video(video, prompt).right,
        num_inference_steps=steps,
        apply_kwargs=extra,
        say=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True),
        **trained.CALL,
        guidance_scale=trained.GUIDANCE[family],
    )
    stem = f"schedules_shipped_{family}_cpu_{datetime.date.today().isoformat()}"
    report.progress = None
    report.to_json(results / f"{stem}.json")
    (results / f"{stem}.md").write_text(report.table() + "\n\n" + report.summary() + "\n")
    print(report.table())
    print(report.summary())


def ship(family: str, report: dict, results: pathlib.Path, steps: int) -> None:
    """The fastest schedule without accelerations within the floor that holds it again on new pairs, beside the
    weights. Choosing the fastest of tens of candidates on 64 pairs favours one that was lucky on them; `confirm`
    reruns those within the floor, fastest first, on the same validation prompts with new seeds, with large only
    as the reference there, and ships the first that holds the floor on both."""
    from sr_plugin.calibration import Floor, confirm, new_seeds
    from sr_plugin.lab import evaluate, trained

    torch.set_num_threads(1)
    within = [
        r
        for r in report["rows"][1:]
        if r["schedule"] and not r["accel"] and r["order"] != "small only" and r["within_floor"]
    ]
    within.sort(key=lambda r: (-r["modelled_speedup"], -(r["accuracy"] or 0.0)))
    pipe, small, extra = trained.load(family)
    pairs = new_seeds([tuple(p) for p in report["pairs"]])
    checked = confirm(
        pipe,
        small,
        [r["schedule"] for r in within],
        pairs,
        floor=Floor(points=report["floor"]["points"]),
        num_inference_steps=steps,
        scorer=lambda video, prompt: evaluate.score_video(video, prompt).right,
        apply_kwargs=extra,
        say=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True),
        **trained.CALL,
        guidance_scale=trained.GUIDANCE[family],
    )
    stem = f"schedules_ship_{family}_cpu_{datetime.date.today().isoformat()}"
    checked.progress = None
    checked.to_json(results / f"{stem}.json")
    (results / f"{stem}.md").write_text(checked.table() + "\n\n" + checked.summary() + "\n")
    print(checked.table())
    print(checked.summary())
    if checked.chosen is None:
        raise SystemExit("no schedule within the floor on the validation pairs holds it on new seeds: nothing shipped")
    pick = next(r for r in within if r["schedule"] == checked.chosen.schedule)
    again = checked.chosen
    record = {
        "schedule": pick["schedule"],
        "order": pick["order"],
        "within_floor": True,
        "floor": report["floor_text"],
        "modelled_speedup": pick["modelled_speedup"],
        "summary": f"{pick['accuracy']:.1f}% right on {len(report['pairs'])} validation pairs against "
        f"{report['rows'][0]['accuracy']:.1f}% for large only (lost {pick['lost']}, gained "
        f"{pick['gained']}), {pick['modelled_speedup']:.2f}x modelled; on the same prompts with new "
        f"seeds {again.accuracy:.1f}% against {checked.reference.accuracy:.1f}% (lost {again.lost}, "
        f"gained {again.gained}), {again.modelled_speedup:.2f}x modelled",
        "tried_before": [r.name for r in checked.rows[1:-1]],
        "date": checked.environment.get("date"),
        "command": f"python benchmarks/schedules.py --family {family} --stage stacked; "
        f"python benchmarks/schedules.py --family {family} --stage ship",
    }
    path = ROOT / "sr_plugin" / "trained" / family / "calibrated.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}: {record['schedule']} ({record['summary']})")


if __name__ == "__main__":
    main()
