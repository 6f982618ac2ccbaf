"""Which text tokens a Wan/CogVideoX large model reads each object's shape and direction from: the held-out
videos' flow/v loss under the right prompt embedding and under embeddings where one source of the pairing is
swapped between the two objects.

    python train/probe_binding.py --family wan     # the checkpoint's EMA weights, 64 pairs, 4 noise draws

Rows (token positions of "a <c> <s> moving <d> and a <c> <s> moving <d>": colours 1, 7; shapes 2, 8;
directions 4, 10):
  right              the prompt's own embedding
  shape words        the two shape tokens exchanged (the colour tokens still carry the right shapes)
  colour-token shapes the shape copies on the two colour tokens exchanged (the shape words still right)
  prompt swapped     the prompt with the two shapes swapped (both sources agree on the wrong pairing)
A model that binds through the colour tokens loses more on "colour-token shapes" than on "shape words".
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import recipe
import torch

from sr_plugin.lab import task, task_encoder, trained

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLOUR_POS, SHAPE_POS, DIRECTION_POS = (1, 7), (2, 8), (4, 10)


def swapped_rows(e: torch.Tensor, rows: tuple[int, int], dims: slice | tuple[int, ...] = slice(None)) -> torch.Tensor:
    out = e.clone()
    a, b = rows
    out[:, a, dims], out[:, b, dims] = e[:, b, dims], e[:, a, dims]
    return out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, required=True)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = recipe.checkpoint_pipeline(args.family, "large")
    model, vae = pipe.transformer, pipe.vae
    objective = recipe.Objective(args.family, "large", pipe)
    pairs = task.held_out()[: args.pairs]
    prompts = [p for p, _ in pairs]
    videos = np.stack([task.render(p, s) for p, s in pairs])
    raw = vae.encode(torch.from_numpy(videos).permute(0, 4, 1, 2, 3) * 2 - 1).latent_dist.mode()
    x0 = objective.model_latents(raw, vae)

    def encode(texts: list[str]) -> torch.Tensor:
        return pipe.encode_prompt(
            texts, do_classifier_free_guidance=False, max_sequence_length=trained.MAX_SEQUENCE_LENGTH, device="cpu"
        )[0]

    def swap_shapes(p: str) -> str:
        a, b = task.parse(p)
        return task.compose(
            (task.ObjectSpec(a.colour, b.shape, a.direction), task.ObjectSpec(b.colour, a.shape, b.direction))
        )

    def swap_directions(p: str) -> str:
        a, b = task.parse(p)
        return task.compose(
            (task.ObjectSpec(a.colour, a.shape, b.direction), task.ObjectSpec(b.colour, b.shape, a.direction))
        )

    right = encode(prompts)
    rows = {
        "right": right,
        "shape words exchanged": swapped_rows(right, SHAPE_POS),
        "colour-token shape copies exchanged": swapped_rows(right, COLOUR_POS, task_encoder.SHAPE_DIMS),
        "prompt with shapes swapped": encode([swap_shapes(p) for p in prompts]),
        "direction words exchanged": swapped_rows(right, DIRECTION_POS),
        "colour-token direction copies exchanged": swapped_rows(right, COLOUR_POS, task_encoder.DIRECTION_DIMS),
        "prompt with directions swapped": encode([swap_directions(p) for p in prompts]),
    }
    levels = [0.5, 0.7, 0.85, 0.95] if args.family == "wan" else [500, 700, 850, 950]
    print(f"{args.family}: mean loss on {args.pairs} held-out pairs x {args.draws} draws, by noise level")
    print(f"{'embedding':42s}" + "".join(f"{lv:>9}" for lv in levels))
    for name, emb in rows.items():
        cells = []
        for lv in levels:
            gen = torch.Generator().manual_seed(0)
            total = 0.0
            for _ in range(args.draws):
                noise = torch.randn(x0.shape, generator=gen)
                total += objective_loss(objective, model, x0, emb, noise, lv)
            cells.append(total / args.draws)
        print(f"{name:42s}" + "".join(f"{c:9.4f}" for c in cells))


def objective_loss(objective, model, x0, text, noise, level) -> float:
    b = x0.shape[0]
    if objective.family == "wan":
        s = torch.full((b, 1, 1, 1, 1), float(level))
        xt = (1 - s) * x0 + s * noise
        pred = model(
            hidden_states=xt, timestep=torch.full((b,), level * 1000.0), encoder_hidden_states=text, return_dict=False
        )[0]
        return (pred - (noise - x0)).pow(2).mean().item()
    t = torch.full((b,), int(level))
    a = objective.abar[t].view(b, 1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * x0
    pred = model(
        hidden_states=xt, encoder_hidden_states=text, timestep=t, image_rotary_emb=objective.rotary, return_dict=False
    )[0]
    return (pred - target).pow(2).mean().item()


if __name__ == "__main__":
    main()
