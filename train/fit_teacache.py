"""Fit TeaCache's rescale polynomials for a shipped family and ship them beside its weights.

    python train/fit_teacache.py --family wan          # about 1 minute on a 2-core CPU
    python train/fit_teacache.py --family cogvideox

TeaCache's published procedure (`sr_plugin.fit_teacache`) on training prompts (never the held-out set),
50 steps, with the switch at the default delta, so the small model is fitted on the steps it runs after it.
Each model's polynomial and R squared go to ``teacache.json`` beside its weights, where `accelerate` finds it
when no coefficients are given. Seeded; rerun after retraining a family.
"""

from __future__ import annotations

import argparse
import pathlib
import random

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]

import sr_plugin  # noqa: E402
from sr_plugin.accel.teacache import save_beside_weights  # noqa: E402
from sr_plugin.lab import task, trained  # noqa: E402

PROMPT_SEED = 11


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, required=True)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--roles",
        nargs="+",
        choices=trained.ROLES,
        default=list(trained.ROLES),
        help="whose teacache.json is written (the other's fit is printed only)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe, small, extra = trained.load(args.family)
    prompts = random.Random(PROMPT_SEED).sample(task.training_prompts(), args.prompts)
    sr_plugin.apply(pipe, small, **extra)
    calibration = sr_plugin.fit_teacache(
        pipe, prompts, num_inference_steps=args.steps, guidance_scale=trained.GUIDANCE[args.family], **trained.CALL
    )
    note = (
        f"sr_plugin.fit_teacache: {args.prompts} training prompts (random.Random({PROMPT_SEED})), "
        f"{args.steps} steps, switch at the default delta"
    )
    for role, model in (("large", pipe.transformer), ("small", small)):
        if role not in args.roles:
            continue
        folder = trained.folder(args.family, role) / "transformer"
        path = save_beside_weights(
            folder, model, calibration.coefficients[role], calibration.r_squared[role], note=note
        )
        print(
            f"{args.family} {role}: R^2 {calibration.r_squared[role]:.4f} from "
            f"{len(calibration.samples[role])} points, coefficients "
            f"{[round(c, 4) for c in calibration.coefficients[role]]} -> {path}"
        )


if __name__ == "__main__":
    main()
