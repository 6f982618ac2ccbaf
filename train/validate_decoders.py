"""The shipped large model's videos decoded by several VAE folders, on 64 validation scenes (training prompts
with seeds the held-out set does not use): does a decoder change how many prompts come out right?

    python train/validate_decoders.py --family wan train/runs/wan/vae /tmp/decoder-800/vae   # 1.3 min a VAE

Measured 2026-12-02 (Wan, prompts right of 64): the shipped VAE 85.9%, its decoder fine-tuned 800 steps 84.4%,
2,000 steps 85.9% (both round-trip every held-out video right, against 95.3% for the shipped one).
"""
import argparse
import pathlib
import random

import torch

import train_family
from sr_plugin.lab import evaluate, task, trained
from sr_plugin.lab.quality import generate_video

VALIDATION_SEED = 2_000_000  # held-out scenes use 1,000,000 + i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, default="wan")
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("vaes", nargs="+", type=pathlib.Path, help="VAE folders (save_pretrained)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = random.Random(7).sample(task.training_prompts(), args.scenes)
    pipe = train_family.checkpoint_pipeline(args.family, "large")
    for folder in args.vaes:
        pipe.vae = type(pipe.vae).from_pretrained(folder).eval()
        scores = [evaluate.score_video(generate_video(pipe, args.family, p, VALIDATION_SEED + i, 50)[0], p)
                  for i, p in enumerate(prompts)]
        print(folder, evaluate.summarize(scores), flush=True)


if __name__ == "__main__":
    main()
