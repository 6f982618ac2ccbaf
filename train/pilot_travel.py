"""Pilot: does a larger motion make direction learnable? Retrains one family's large transformer on the task with
each object travelling ``--travel`` pixels instead of `sr_plugin.lab.task.TRAVEL` (6), with the family's shipped VAE
and text encoder, and scores large only on the first held-out pairs (whose trajectories use the same travel).

    python train/pilot_travel.py --family cogvideox --travel 12 --steps 1000     # about 30 minutes, one thread

CogVideoX's shipped VAE reconstructs travel-12 videos perfectly (100% of held-out prompts); Wan's does not (50%)
and would need retraining first, so the pilot is CogVideoX's. Seeded; writes to train/runs/<family>_travel<N>/.
Not part of the shipped families: it decides whether the next task revision should move objects further.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

from sr_plugin.lab import evaluate, quality, task, trained  # noqa: E402
import train_family  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, default="cogvideox")
    parser.add_argument("--travel", type=float, default=12.0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--heads", type=int, default=8, help="large transformer heads (head dim 16)")
    parser.add_argument("--eval-pairs", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task.TRAVEL = args.travel
    evaluate.MIN_TRAVEL = 0.4 * args.travel
    trained.SIZES[args.family]["large"] = (trained.SIZES[args.family]["large"][0], args.heads)
    work = ROOT / "train" / "runs" / f"{args.family}_travel{int(args.travel)}"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "vae").exists():
        shutil.copytree(trained.folder(args.family, "large") / "vae", work / "vae")
    ns = argparse.Namespace(family=args.family, seed=0, videos=12288, steps=args.steps, batch=64, lr=1e-3, ema=0.998,
                            save_every=200, resume=False)
    if not (work / "data.pt").exists():
        train_family.stage_encode(ns, work)
    train_family.stage_transformer(ns, work, "large")
    pipe, _, _ = trained.load(args.family)
    pipe.transformer = type(pipe.transformer).from_pretrained(work / "large" / "transformer").eval()
    scores = []
    for prompt, seed in task.held_out()[:args.eval_pairs]:
        video = quality.generate_video(pipe, args.family, prompt, seed, 50)[0]
        scores.append(evaluate.score_video(video, prompt))
    per = {k: float(np.mean([getattr(o, k) for s in scores for o in s.objects])) for k in ("colour", "shape", "direction")}
    train_family.log(f"travel {args.travel}: large only on {args.eval_pairs} held-out pairs: {evaluate.summarize(scores)}; "
                     f"per attribute {per}")


if __name__ == "__main__":
    main()
