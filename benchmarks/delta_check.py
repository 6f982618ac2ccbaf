"""Does the delta calibration keep its promise? Calibrate on training prompts, rerun the pick on held-out ones.

    python benchmarks/delta_check.py                 # both families, 16 + 16 prompts, 50 steps (about 25 minutes)
    python benchmarks/delta_check.py --family wan --prompts 8 --check-prompts 8

`sr_plugin.calibration.delta`: the sweep (the speed-quality benchmark's deltas and fixed steps) on training prompts
picks the setting with the best SSIM within TARGET_TIME_RATIO of large only and promises its speed-up; the
picked setting is then rerun on held-out prompts (disjoint: no held-out scene is ever a training prompt) and its
speed-up measured plainly (total SR time over total paired large-only time). One torch thread; writes
``benchmarks/results/delta_check_<family>_cpu_<date>.json``. Never part of the test run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]

import diffusers  # noqa: E402

from sr_plugin.cli.calibrate_delta import run_calibrate_delta  # noqa: E402
from sr_plugin.lab import speed_quality as sq  # noqa: E402
from sr_plugin.lab import trained  # noqa: E402

#: The target: the best SSIM among settings that take at most this fraction of large only's time.
TARGET_TIME_RATIO = 0.6


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, action="append")
    parser.add_argument("--prompts", type=int, default=16, help="training prompts to calibrate on")
    parser.add_argument("--check-prompts", type=int, default=16, help="held-out prompts to rerun the pick on")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)  # before the run, not after it
    torch.set_num_threads(1)
    env = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": 1,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
    }
    for family in args.family or list(trained.FAMILY_NAMES):
        start = time.time()
        picked, sweep, check = run_calibrate_delta(
            family,
            args.prompts,
            args.steps,
            list(sq.DELTAS),
            list(sq.SWITCH_STEPS),
            None,
            TARGET_TIME_RATIO,
            say=log,
            check_prompts=args.check_prompts,
        )
        result = {
            "environment": env,
            "family": family,
            "steps": args.steps,
            "calibration_prompts": args.prompts,
            "check_prompts": args.check_prompts,
            "target_time_ratio": TARGET_TIME_RATIO,
            "step_ratio": sweep.step_ratio,
            "rows": [r.as_dict() for r in sweep.rows],
            "check": check.as_dict(),
            "minutes": (time.time() - start) / 60,
        }
        path = args.out / f"delta_check_{family}_cpu_{datetime.date.today().isoformat()}.json"
        path.write_text(json.dumps(result, indent=1))
        log(f"wrote {path}")


if __name__ == "__main__":
    main()
