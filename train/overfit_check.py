"""Does a large model fit its training videos better than new videos of the same prompts, and those better
than videos of prompts it never saw? The denoising loss of a checkpoint's EMA weights on training latents (from
data.pt), on freshly rendered videos of training prompts, and on freshly rendered videos of the held-out prompts
(new seeds, not the evaluation's), with the same noise and noise levels for all three (paired), at the noise
levels of the whole schedule:

    python train/overfit_check.py --family wan --checkpoints train/pilots/wan-large-12

A gap between the first two says the model memorises its 12,288 videos and more videos (`--videos`) is a
lever. A gap between the last two says it fits its 4,192 training prompts better than new combinations of the
same words: what limits the held-out score is then how it generalises across prompts, which more videos of the
same prompts or more capacity do not mend.
"""

import argparse
import pathlib

import numpy as np
import recipe
import torch

from sr_plugin.lab import task, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, default="wan")
    parser.add_argument("--checkpoints", type=pathlib.Path, default=recipe.ROOT / "train" / "checkpoints")
    parser.add_argument("--videos", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=4, help="noise draws per video")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = recipe.ROOT / "train" / "runs" / args.family
    data = torch.load(work / "data.pt")
    pipe = recipe.checkpoint_pipeline(args.family, "large", checkpoints=args.checkpoints)
    model, vae = pipe.transformer, pipe.vae
    objective = recipe.Objective(args.family, "large", pipe)
    pick = torch.randperm(data["latents"].shape[0], generator=torch.Generator().manual_seed(5))[: args.videos]
    seen = objective.model_latents(data["latents"][pick], vae)
    seen_text = data["embeds"][data["prompt_ids"][pick]]
    rng = np.random.default_rng(12345)  # not the encode stage's seed: new scenes
    index = {p: k for k, p in enumerate(data["prompts"])}

    @torch.no_grad()
    def rendered(prompts: list[str]) -> tuple[torch.Tensor, list[str]]:
        """``args.videos`` new videos of the prompts (drawn from ``rng``), encoded to model latents."""
        latents, names = [], []
        for i in range(0, args.videos, 32):
            x, chosen = recipe.render_batch(rng, prompts, min(32, args.videos - i))
            latents.append(vae.encode(x).latent_dist.mode())
            names += chosen
        return objective.model_latents(torch.cat(latents), vae), names

    fresh, names = rendered(task.training_prompts())
    fresh_text = data["embeds"][torch.tensor([index[p] for p in names])]
    held_out = [p for p, _ in task.held_out()]
    unseen, unseen_names = rendered(held_out)
    with torch.no_grad():
        held_embeds = pipe.encode_prompt(
            held_out, do_classifier_free_guidance=False, max_sequence_length=trained.MAX_SEQUENCE_LENGTH, device="cpu"
        )[0]
    unseen_text = held_embeds[torch.tensor([held_out.index(p) for p in unseen_names])]
    sets = {
        "training videos": (seen, seen_text),
        "new videos": (fresh, fresh_text),
        "held-out prompts": (unseen, unseen_text),
    }
    losses: dict[str, list[float]] = {name: [] for name in sets}
    with torch.no_grad():
        for r in range(args.repeats):
            for i in range(0, args.videos, 64):
                for name, (x, text) in sets.items():
                    gen = torch.Generator().manual_seed(1000 * r + i)  # the same noise for every set
                    losses[name].append(objective.loss(model, x[i : i + 64], text[i : i + 64], gen).item())
    a, b, c = (np.array(losses[name]) for name in sets)
    for label, first, second in (("new videos - training videos", b, a), ("held-out prompts - new videos", c, b)):
        diff = first - second
        print(
            f"{label}: {first.mean():.4f} - {second.mean():.4f} = {diff.mean():+.4f} "
            f"+- {diff.std(ddof=1) / np.sqrt(len(diff)):.4f} (standard error, {len(diff)} batches)"
        )


if __name__ == "__main__":
    main()
