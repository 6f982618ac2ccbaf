"""What a trained large model gets wrong on the held-out pairs: per wrong attribute, whether the model drew the
other object's shape or direction (a pairing error) or something else (a drawing error).

    python train/diagnose_errors.py --family wan        # the checkpoint's EMA weights, 64 pairs, 50 steps

Reads the run folder's VAE (train/runs/<family>/vae: the vae stage) and the committed checkpoint.
"""

from __future__ import annotations

import argparse
import collections
import pathlib

import recipe
import torch

from sr_plugin.lab import evaluate, quality, task, trained

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, required=True)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vae", type=pathlib.Path, default=None, help="decode with this VAE folder instead")
    parser.add_argument("--list", action="store_true", help="print each wrong prompt with what was seen")
    parser.add_argument(
        "--checkpoints",
        type=pathlib.Path,
        default=ROOT / "train" / "checkpoints",
        help="folder holding <family>/large.pt (default: the shipped run's)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = recipe.checkpoint_pipeline(args.family, "large", checkpoints=args.checkpoints)
    if args.vae is not None:
        pipe.vae = type(pipe.vae).from_pretrained(args.vae).eval()
    kinds: collections.Counter = collections.Counter()
    for i, (prompt, seed) in enumerate(task.held_out()[: args.pairs]):
        video = quality.generate_video(pipe, args.family, prompt, seed, args.steps)[0]
        score = evaluate.score_video(video, prompt)
        if args.list and not score.right:
            print(
                f"pair {i}: {prompt!r} seen: "
                + "; ".join(
                    f"{o.spec.colour} {o.seen_shape} {o.seen_direction}" + ("" if o.colour else " (colour missing)")
                    for o in score.objects
                ),
                flush=True,
            )
        kinds["prompts right" if score.right else "prompts wrong"] += 1
        for mine, other in zip(score.objects, reversed(score.objects)):
            if not mine.colour:
                kinds["colour missing"] += 1
            if not mine.shape:
                kinds[
                    "shape: the other object's"
                    if mine.seen_shape == other.spec.shape
                    else f"shape: {mine.seen_shape or 'none seen'}"
                ] += 1
            if not mine.direction:
                kinds[
                    "direction: the other object's"
                    if mine.seen_direction == other.spec.direction
                    else f"direction: {mine.seen_direction or 'no motion'}"
                ] += 1
    for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"{args.family}: {kind}: {count}")


if __name__ == "__main__":
    main()
