"""What each model of a family recovers in one step from a true noisy sample of the held-out videos: the noise of
the large model's step k (CogVideoX's small model at the same noise, through the hand-off's latent-space map;
Wan's pair shares latents and sigmas), its x0 decoded and scored (no CFG). Does a small model read
shapes the sample does not show?

    python train/denoise_probe.py --ks 20,25,30,40                  # the shipped models, about 30 seconds
    python train/denoise_probe.py --ks 25 --checkpoints DIR           # another small model's checkpoint
    python train/denoise_probe.py --ks 25 --null                    # the empty prompt: what the sample alone carries

    python train/denoise_probe.py --family wan --ks 20,25,30,40

Measured 2026-12-02, CogVideoX, first 32 pairs, step 25 (prompts right; shapes / directions right of 64): large 27;
59 / 64.
Shipped small 2; 33 / 29. The train/pilots run at steps 9,000 / 17,000 / 30,000 (the last committed): 4, 4, 7;
shapes 29, 28, 32;
directions 61, 61, 62. With the empty prompt the large model gets 31 of 64 shapes (59 of 64 directions).
Wan (the 20-block focus large model), the same 32 pairs, steps 20 / 25 / 30 / 40, shapes of 64: large 52 / 55 /
61 / 61, small 10 / 20 / 25 / 57 (directions 12 / 22 / 39 / 61 against the large model's 61-64); with the empty
prompt the large model gets 24 / 34 shapes at steps 25 / 30.
"""

import argparse
import pathlib

import numpy as np
import recipe
import torch

from sr_plugin.adapters.cogvideox import LatentSpaceMap
from sr_plugin.lab import task, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, default="cogvideox")
    parser.add_argument("--ks", default="20,25,30,40")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument(
        "--checkpoints",
        type=pathlib.Path,
        default=None,
        help="folder holding <family>/small.pt (default: the shipped small model)",
    )
    parser.add_argument("--null", action="store_true", help="condition on the empty prompt")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    family = args.family
    pipe, small, extra = trained.load(family)
    if args.checkpoints is not None:
        small = recipe.ema_model(family, "small", pathlib.Path("unused"), args.checkpoints)
    vae, large_scheduler = pipe.vae, pipe.scheduler
    large_scheduler.set_timesteps(50)
    objective = {role: recipe.Objective(family, role, pipe) for role in ("large", "small")}
    pairs = task.held_out()[: args.pairs]
    prompts = [p for p, _ in pairs]
    with torch.no_grad():
        raw = recipe.encode_held_out(vae, pairs)
        text = pipe.encode_prompt(
            ["" if args.null else p for p in prompts],
            do_classifier_free_guidance=False,
            max_sequence_length=trained.MAX_SEQUENCE_LENGTH,
            device="cpu",
        )[0]
    shape = raw.shape if family == "wan" else raw.permute(0, 2, 1, 3, 4).shape
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if family == "cogvideox":
        small_scheduler = extra["small_scheduler"]
        scale = {role: trained.COGVIDEOX_SPACE[role][0] for role in ("large", "small")}
        space = LatentSpaceMap(
            large_scheduler.alphas_cumprod, small_scheduler.alphas_cumprod, scale["small"] / scale["large"]
        )

    def one_step(role: str, model: torch.nn.Module, t: float) -> tuple[torch.Tensor, str]:
        """The x0 (raw latents) that ``model`` predicts from the true sample at the large model's timestep t."""
        if family == "wan":  # one latent space and sigma for both: x_t = (1 - s) x0 + s noise, prediction noise - x0
            sigma = t / 1000
            xt = (1 - sigma) * objective[role].model_latents(raw, vae) + sigma * noise
            pred = model(
                hidden_states=xt, encoder_hidden_states=text, timestep=torch.full((len(pairs),), t), return_dict=False
            )[0]
            return objective[role].raw_latents(xt - sigma * pred, vae), f"sigma {sigma:.3f}"
        scheduler = large_scheduler if role == "large" else small_scheduler
        tt = t if role == "large" else float(space.coefficients(torch.tensor([t]))["t_small"][0])
        a = float(np.interp(tt, np.arange(len(scheduler.alphas_cumprod)), scheduler.alphas_cumprod.numpy()))
        xt = a**0.5 * objective[role].model_latents(raw, vae) + (1 - a) ** 0.5 * noise
        extra_kw = {"image_rotary_emb": objective[role].rotary} if model.config.use_rotary_positional_embeddings else {}
        v = model(
            hidden_states=xt,
            encoder_hidden_states=text,
            timestep=torch.full((len(pairs),), tt),
            return_dict=False,
            **extra_kw,
        )[0]
        return objective[role].raw_latents(a**0.5 * xt - (1 - a) ** 0.5 * v, vae), f"t {tt:.0f}, abar {a:.3f}"

    def score(x0_raw: torch.Tensor) -> str:
        scores = recipe.decode_and_score(vae, x0_raw, prompts)[1]
        per = {a: sum(getattr(o, a) for sc in scores for o in sc.objects) for a in ("shape", "direction")}
        return f"{sum(sc.right for sc in scores)} prompts; shapes {per['shape']}, directions {per['direction']}"

    for k in map(int, args.ks.split(",")):
        t = float(large_scheduler.timesteps[k])
        line = []
        for role, model in (("large", pipe.transformer), ("small", small)):
            with torch.no_grad():
                x0_raw, level = one_step(role, model, t)
            line.append(f"{role} ({level}): {score(x0_raw)}")
        print(f"k={k}: " + " | ".join(line), flush=True)


if __name__ == "__main__":
    main()
