"""Who decides an object's shape at step k: the noisy sample or the prompt? (why SR loses prompts)

The held-out videos are encoded, noised to the noise level of the 50-step sampler's step k, and handed to the
large model with a prompt whose two shapes are swapped; its one-step x0 estimate is decoded and each object's
shape scored against the video (the sample's shapes) and against the prompt's. Pairs whose two objects share a
shape are left out. No CFG: the conditional prediction alone.

    python train/shape_decided.py --family cogvideox --ks 10,20,25,30,35,40,45    # about 1 minute

Measured 2026-12-02 (shipped weights, 46 pairs, 92 objects; shape as in the sample / as in the prompt):
CogVideoX k=10: 16 / 60, k=20: 5 / 80, k=25: 3 / 87, k=30: 3 / 86, k=35: 12 / 72, k=40: 24 / 53, k=45: 38 / 39.
Wan's 16-block large model (`--family wan --ks 20,25,30,40,45`): 12 / 62, 17 / 64, 24 / 52, 49 / 31, 68 / 19
(the 8-block one: 18 / 57, 19 / 56, 34 / 38, 51 / 28, 74 / 17).
Until step 30 the large model draws the prompt's shapes over the sample's: the sample does not carry the shape
yet, each step reads it from the prompt, so a small model that cannot bind shapes redraws them after a switch.
"""

import argparse
import dataclasses

import recipe
import torch

from sr_plugin.lab import evaluate, task, trained


def swapped(prompt: str) -> str:
    a, b = task.parse(prompt)
    return task.compose((dataclasses.replace(a, shape=b.shape), dataclasses.replace(b, shape=a.shape)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, default="cogvideox")
    parser.add_argument("--ks", default="10,20,25,30,35,40,45")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe, _, _ = trained.load(args.family)
    vae, scheduler = pipe.vae, pipe.scheduler
    scheduler.set_timesteps(50)
    pairs = [(p, s) for p, s in task.held_out() if task.parse(p)[0].shape != task.parse(p)[1].shape]
    objective = recipe.Objective(args.family, "large", pipe)
    with torch.no_grad():
        z = objective.model_latents(recipe.encode_held_out(vae, pairs), vae)
        text = pipe.encode_prompt(
            [swapped(p) for p, _ in pairs],
            do_classifier_free_guidance=False,
            max_sequence_length=trained.MAX_SEQUENCE_LENGTH,
            device="cpu",
        )[0]
    extra = {"image_rotary_emb": objective.rotary} if args.family == "cogvideox" else {}
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    for k in map(int, args.ks.split(",")):
        t = scheduler.timesteps[k]
        with torch.no_grad():
            if args.family == "wan":  # flow matching: x_t = (1 - sigma) x0 + sigma noise, prediction noise - x0
                sigma = float(t) / 1000
                xt = (1 - sigma) * z + sigma * noise
                pred = pipe.transformer(
                    hidden_states=xt, encoder_hidden_states=text, timestep=t.expand(len(pairs)), return_dict=False
                )[0]
                x0, level = xt - sigma * pred, f"sigma {sigma:.3f}"
            else:  # v-prediction
                a = float(scheduler.alphas_cumprod[int(t)])
                xt = a**0.5 * z + (1 - a) ** 0.5 * noise
                pred = pipe.transformer(
                    hidden_states=xt,
                    encoder_hidden_states=text,
                    timestep=t.expand(len(pairs)),
                    return_dict=False,
                    **extra,
                )[0]
                x0, level = a**0.5 * xt - (1 - a) ** 0.5 * pred, f"abar {a:.3f}"
        videos, scores = recipe.decode_and_score(vae, objective.raw_latents(x0, vae), [p for p, _ in pairs])
        as_sample = sum(o.shape for sc in scores for o in sc.objects)
        as_prompt = sum(
            o.shape for v, (p, _) in zip(videos, pairs) for o in evaluate.score_video(v, swapped(p)).objects
        )
        print(
            f"{args.family} k={k} ({level}): of {2 * len(pairs)} objects, shape as in the sample {as_sample}, "
            f"as in the prompt {as_prompt}",
            flush=True,
        )


if __name__ == "__main__":
    main()
