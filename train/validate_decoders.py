"""A large model's checkpoint on 64 validation scenes (training prompts with seeds the held-out set does not
use), its videos decoded by one or several VAE folders: does a decoder change how many prompts come out right,
and is a checkpoint's held-out figure more than a lucky draw?

    python train/validate_decoders.py --family wan train/runs/wan/vae /tmp/decoder-800/vae   # 1.3 min a VAE
    python train/validate_decoders.py --family wan --checkpoints train/pilots/wan-large-12

Measured 2026-12-02 (Wan, prompts right of 64): the shipped VAE 85.9%, its decoder fine-tuned 800 steps 84.4%,
2,000 steps 85.9% (both round-trip every held-out video right, against 95.3% for the shipped one).
"""

import argparse
import pathlib
import random

import recipe
import torch

from sr_plugin.lab import evaluate, task, trained
from sr_plugin.lab.quality import generate_video

VALIDATION_SEED = 2_000_000  # held-out scenes use 1,000,000 + i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, default="wan")
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--checkpoints",
        type=pathlib.Path,
        default=recipe.ROOT / "train" / "checkpoints",
        help="folder holding <family>/large.pt (default: the shipped run's)",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        nargs="*",
        default=None,
        help="CFG scales to compare (default: the family's shipped one)",
    )
    parser.add_argument("vaes", nargs="*", type=pathlib.Path, help="VAE folders (default: the run folder's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = random.Random(7).sample(task.training_prompts(), args.scenes)
    pipe = recipe.checkpoint_pipeline(args.family, "large", checkpoints=args.checkpoints)
    for folder in args.vaes or [recipe.ROOT / "train" / "runs" / args.family / "vae"]:
        pipe.vae = type(pipe.vae).from_pretrained(folder).eval()
        for scale in args.guidance or [trained.GUIDANCE[args.family]]:
            scores = [
                evaluate.score_video(
                    generate_video(pipe, args.family, p, VALIDATION_SEED + i, 50, guidance_scale=scale)[0], p
                )
                for i, p in enumerate(prompts)
            ]
            print(folder, f"guidance {scale}", evaluate.summarize(scores), flush=True)


if __name__ == "__main__":
    main()
