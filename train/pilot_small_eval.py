"""Pilot (issue 18): a small model's checkpoint under SR with the shipped large model, at fixed switch steps.

    python train/pilot_small_eval.py --family cogvideox --checkpoints train/runs/cogvideox-small-pilot/checkpoints --pairs 32 --ks 0,20,25,30,40
    python train/pilot_small_eval.py --family cogvideox --pairs 32 --ks 30,40     # the shipped small model
    python train/pilot_small_eval.py --family cogvideox --checkpoints /tmp/render --ks 20,25,30   # a renderer pilot

k=0 is small only. Scores the first --pairs held-out pairs at 50 steps; one line per k.
"""
import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sr_plugin  # noqa: E402
from sr_plugin.lab import evaluate, task, trained  # noqa: E402
from sr_plugin.lab.quality import generate_video  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, default="cogvideox")
    parser.add_argument("--checkpoints", type=pathlib.Path, default=None,
                        help="folder holding <family>/small.pt (default: the shipped small weights)")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--offset", type=int, default=0, help="skip the first held-out pairs")
    parser.add_argument("--ks", default="20,25,30")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import train_family

    torch.set_num_threads(args.threads)
    pipe, small, extra = trained.load(args.family)
    if args.checkpoints is not None:
        small = train_family.ema_model(argparse.Namespace(checkpoints=args.checkpoints, family=args.family),
                                       pathlib.Path("unused"), "small")
    pairs = task.held_out()[args.offset: args.offset + args.pairs]
    for k in map(int, args.ks.split(",")):
        scores = []
        for p, s in pairs:
            h = sr_plugin.apply(pipe, small, switch_step=k, **extra)
            try:
                scores.append(evaluate.score_video(generate_video(pipe, args.family, p, s, 50)[0], p))
            finally:
                h.remove()
        print(f"{args.family} small {args.checkpoints or 'shipped'} k={k}", evaluate.summarize(scores), flush=True)


if __name__ == "__main__":
    main()
