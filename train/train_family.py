"""Train a shipped model family on the task of `sr_plugin.lab.task` and write its diffusers folders.

    python train/train_family.py --family wan          # all stages; about 30 minutes on a 2-core CPU
    python train/train_family.py --family cogvideox

Stages (each reads the previous one's output from --work, default train/runs/<family>; ``--stage`` runs one):
  vae       the family's VAE on rendered task videos (reconstruction through noisy posterior means + a pull of
            the latents' spread to 1)
  encode    a fixed set of task videos to latents, and every training prompt (and "") to text embeddings
  large     the large transformer (flow matching for Wan; v-prediction with its schedule and scale for CogVideoX)
  small     the small transformer, the same way (CogVideoX: its own scale and schedule, sincos positions)
  export    `save_pretrained` (safetensors) of both pipeline folders into sr_plugin/trained/<family>/

Everything is seeded (--seed); the held-out scenes of `sr_plugin.lab.task.held_out()` never appear in training.
CFG works because 10% of the training samples get the empty prompt's embedding.

Warm start and resumption (the recipe of the shipped weights, README "Trained families"):
  --from-shipped   the vae stage copies the shipped VAE (latent statistics kept) and the large/small stages
                   start from the shipped transformers instead of random weights
  --resume         continue from train/checkpoints/<family>/<role>.pt (weights, EMA, optimizer, step,
                   generator), saved every --save-every steps and committed, so that a run survives the machine;
                   --steps is the total to reach
  --stage eval     score both roles' checkpoints once (e.g. --eval-pairs 64 --eval-steps 50: the held-out set)
  --eval-every N   score the EMA weights on the first --eval-pairs held-out pairs at --eval-steps steps every N
                   steps: one line per evaluation in train/curves/<family>-<role>.csv (the learning curve)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import numpy as np
import torch
from recipe import (  # train/recipe.py, beside this script
    COND_DROPOUT,
    LATENT_NOISE,
    OBJECT_WEIGHT,
    ROOT,
    Objective,
    checkpoint_model,
    checkpoint_pipeline,
    decode_and_score,
    decode_unclamped,
    ema_model,
    encode_held_out,
    grow,
    init_from_large,
    log,
    lr_at,
    render_batch,
    save_ema,
)

from sr_plugin.lab import call_defaults, task, trained


def stage_vae(args: argparse.Namespace, work: pathlib.Path) -> None:
    if args.from_shipped:  # the shipped VAE as it is: its latent statistics stay those the shipped models know
        model = type(trained.vae(args.family)).from_pretrained(trained.folder(args.family, "large") / "vae")
        model.eval().save_pretrained(work / "vae")
        log(f"copied the shipped {args.family} VAE to {work / 'vae'}")
        return
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = trained.vae(args.family)
    if args.vae_init is not None:  # continue from an earlier run's VAE
        model = type(model).from_pretrained(args.vae_init)
    model.train()
    if args.vae_decoder_only:  # the encoder, and so every latent the transformers learned, stays as it is
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("decoder.", "post_quant_conv.")))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.vae_lr, weight_decay=0.0)
    prompts = task.training_prompts()
    start = time.time()
    for step in range(args.vae_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vae_steps, args.vae_lr, warmup=20)
        x, _ = render_batch(rng, prompts, args.vae_batch)
        posterior = model.encode(x).latent_dist
        # A deterministic autoencoder (the posterior mean) with a little noise on the latents, so that the decoder
        # tolerates the small errors a generated latent has; raw latents pulled to unit spread so that the
        # families' scales (CogVideoX: 0.7 and 1.15) give latents of about unit variance.
        z = posterior.mean
        recon = decode_unclamped(model, z + LATENT_NOISE * torch.randn_like(z))
        # The objects cover about a tenth of the frame: weighting their pixels keeps the background from
        # dominating (unweighted, colours and edges came out washed out and the evaluator failed them).
        weight = 1.0 + OBJECT_WEIGHT * (x.max(dim=1, keepdim=True).values > -0.9).float()
        rec = (weight * ((recon - x).abs() + (recon - x).pow(2))).mean() / weight.mean()
        spread = (z.std() - 1.0) ** 2
        loss = rec + 0.1 * spread
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == args.vae_steps - 1:
            log(
                f"vae step {step}/{args.vae_steps} rec {rec.item():.4f} latent std {posterior.mean.std().item():.3f} "
                f"({time.time() - start:.0f} s)"
            )
    model.eval().save_pretrained(work / "vae")
    check_vae(model.eval(), args.family)


@torch.no_grad()
def check_vae(model, family: str) -> None:
    """The evaluator on the VAE's reconstructions of the held-out videos: the ceiling a generator can reach."""
    from sr_plugin.lab import evaluate

    pairs = task.held_out()
    videos, scores = decode_and_score(model, encode_held_out(model, pairs), [p for p, _ in pairs])
    psnr = np.mean([evaluate.fidelity(v, task.render(p, s))[0] for v, (p, s) in zip(videos, pairs)])
    log(f"{family} VAE on the held-out videos: {evaluate.summarize(scores)}, PSNR {psnr:.2f} dB")


@torch.no_grad()
def stage_encode(args: argparse.Namespace, work: pathlib.Path) -> None:
    vae_cls = type(trained.vae(args.family))
    vae = vae_cls.from_pretrained(work / "vae").eval()
    encoder = trained.text_encoder(args.family)
    rng = np.random.default_rng(args.seed + 1)
    prompts = task.training_prompts()
    latents, names = [], []
    start = time.time()
    for i in range(0, args.videos, 32):
        x, chosen = render_batch(rng, prompts, min(32, args.videos - i))
        latents.append(vae.encode(x).latent_dist.mode())
        names += chosen
        if i % 1024 == 0:
            log(f"encoded {i}/{args.videos} videos ({time.time() - start:.0f} s)")
    raw = torch.cat(latents)  # [N, C, F, h, w]
    if args.family == "wan" and not args.from_shipped:  # Wan normalizes latents per channel (VAE config)
        mean = raw.mean(dim=(0, 2, 3, 4))
        std = raw.std(dim=(0, 2, 3, 4))
        vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
        vae.save_pretrained(work / "vae")
        log(f"latents mean {mean.numpy().round(3)} std {std.numpy().round(3)}")
    elif args.family == "cogvideox":
        log(f"raw latent std {raw.std().item():.3f} (large model sees x0.7, small x1.1526)")
    pipe = trained.build_pipeline(args.family, "large", trained.transformer(args.family, "small"), vae, encoder)
    unique = sorted(set(prompts)) + [""]
    embeds = {}
    for j in range(0, len(unique), 256):
        chunk = unique[j : j + 256]
        e = pipe.encode_prompt(
            chunk, do_classifier_free_guidance=False, max_sequence_length=trained.MAX_SEQUENCE_LENGTH, device="cpu"
        )[0]
        embeds.update(zip(chunk, e))
    table = torch.stack([embeds[p] for p in unique])
    index = {p: k for k, p in enumerate(unique)}
    torch.save(
        {
            "latents": raw,
            "prompt_ids": torch.tensor([index[p] for p in names]),
            "embeds": table,
            "null_id": index[""],
            "prompts": unique,
        },
        work / "data.pt",
    )
    log(f"wrote {work / 'data.pt'}: {tuple(raw.shape)} latents, {len(unique)} prompt embeddings")


# ------------------------------------------------------------------------------------------- transformers
def stage_transformer(args: argparse.Namespace, work: pathlib.Path, role: str) -> None:
    torch.manual_seed(args.seed + (10 if role == "large" else 20))
    gen = torch.Generator().manual_seed(args.seed + (11 if role == "large" else 21))
    data = torch.load(work / "data.pt")
    vae = type(trained.vae(args.family)).from_pretrained(work / "vae")
    model = trained.transformer(args.family, role, seed=args.seed + (12 if role == "large" else 22))
    checkpoint_path = args.checkpoints / args.family / f"{role}.pt"
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = torch.load(checkpoint_path) if args.resume and checkpoint_path.is_file() else None
    if checkpoint is None and args.resume and (work / role / "transformer").is_dir():  # an older run's EMA weights
        model = type(model).from_pretrained(work / role / "transformer")
    elif checkpoint is None and args.grow_from:  # a pilot's EMA weights, grown to --large-layers
        grow(checkpoint_model(args.grow_from / args.family / f"{role}.pt", args.family, role), model)
        log(f"{role}: warm start from {args.grow_from}")
    elif checkpoint is None and role == "small" and args.init_from_large:
        init_from_large(model, args.family, args.init_from_large)
    elif checkpoint is None and args.from_shipped:
        shipped = type(model).from_pretrained(trained.folder(args.family, role) / "transformer")
        if shipped.config.num_layers == model.config.num_layers:
            model = shipped
        else:  # --large-layers: a deeper model computing the same function to start with
            grow(shipped, model)
        log(f"{role}: warm start from the shipped weights")
    model.train()
    pipe = trained.build_pipeline(args.family, role, model, vae, trained.text_encoder(args.family))
    objective = Objective(
        args.family,
        role,
        pipe,
        render_from=args.render_from if role == "small" else 0,
        focus=tuple(args.focus) if args.focus else None,
        distill=args.distill if role == "small" else 0.0,
    )
    if objective.teacher is not None:
        log(f"{role}: distilled from the shipped large model (weight {args.distill})")
    if objective.focus is not None:
        log(f"{role}: {args.focus[2]:.0%} of each batch at sigma {args.focus[0]}-{args.focus[1]}")
    if objective.ceiling is not None:
        log(f"{role}: noise levels of steps {args.render_from}-50 only (timestep <= {objective.ceiling:.0f})")
    x_all = objective.model_latents(data["latents"], vae)
    log(
        f"{role}: {sum(p.numel() for p in model.parameters()) / 1e6:.3f} M parameters; model latents std "
        f"{x_all.std().item():.3f}"
    )
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    first = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        for e, saved in zip(ema, checkpoint["ema"]):
            e.copy_(saved)
        opt.load_state_dict(checkpoint["optimizer"])
        gen.set_state(checkpoint["generator"])
        first = checkpoint["step"]
        log(f"{role}: resumed at step {first} from {checkpoint_path}")
    steps = args.steps
    start = time.time()
    running = None
    for step in range(first, steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, args.lr, schedule=args.schedule, cooldown_from=args.cooldown_from)
        idx = torch.randint(0, x_all.shape[0], (args.batch,), generator=gen)
        prompt_ids = data["prompt_ids"][idx]
        drop = torch.rand(args.batch, generator=gen) < COND_DROPOUT
        prompt_ids = torch.where(drop, torch.full_like(prompt_ids, data["null_id"]), prompt_ids)
        loss = objective.loss(model, x_all[idx], data["embeds"][prompt_ids], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.lerp_(p.detach(), 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        done = step + 1 - first
        if step % 100 == 0 or step == steps - 1:
            rate = (time.time() - start) / done
            log(
                f"{role} step {step}/{steps} loss {running:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({rate:.2f} s/step, {rate * (steps - step - 1) / 60:.1f} min left)"
            )
        if (step + 1) % args.save_every == 0 or step == steps - 1:
            save_ema(model, ema, work / role / "transformer")
            partial = checkpoint_path.with_suffix(".partial")  # a stop mid-write never leaves a broken checkpoint
            torch.save(
                {
                    "model": model.state_dict(),
                    "ema": ema,
                    "optimizer": opt.state_dict(),
                    "generator": gen.get_state(),
                    "step": step + 1,
                },
                partial,
            )
            os.replace(partial, checkpoint_path)
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step == steps - 1):
            evaluate_checkpoint(args, work, role, step + 1, running, (time.time() - start) / done)
    log(f"{role} done in {(time.time() - start) / 60:.1f} min")


@torch.no_grad()
def evaluate_checkpoint(
    args: argparse.Namespace, work: pathlib.Path, role: str, step: int, loss: float | None, seconds_per_step: float
) -> None:
    """The learning curve: the saved EMA weights on the first held-out pairs, appended to curve.csv."""
    from sr_plugin.lab import evaluate, quality

    pipe = checkpoint_pipeline(args.family, role, work, args.checkpoints)
    step = getattr(pipe.transformer, "trained_steps", step)  # what was loaded, even if a run saved again meanwhile
    pairs = task.held_out()[: args.eval_pairs]
    scores = [
        evaluate.score_video(quality.generate_video(pipe, args.family, p, s, args.eval_steps)[0], p) for p, s in pairs
    ]
    summary = evaluate.summarize(scores)
    curve = getattr(args, "curve", None) or ROOT / "train" / "curves" / f"{args.family}-{role}.csv"  # committed
    curve.parent.mkdir(parents=True, exist_ok=True)
    if not curve.is_file():
        curve.write_text(
            "step,loss,prompt_accuracy,attribute_accuracy,colour,shape,direction,pairs,"
            "sampling_steps,seconds_per_step\n"
        )
    per = {
        k: sum(getattr(o, k) for sc in scores for o in sc.objects) / (2 * len(scores)) * 100
        for k in ("colour", "shape", "direction")
    }
    with curve.open("a") as f:
        f.write(
            f"{step},{loss if loss is not None else float('nan'):.4f},{summary['prompt_accuracy']:.1f},"
            f"{summary['attribute_accuracy']:.1f},{per['colour']:.1f},{per['shape']:.1f},"
            f"{per['direction']:.1f},{len(pairs)},{args.eval_steps},{seconds_per_step:.3f}\n"
        )
    log(
        f"{role} step {step} on {len(pairs)} held-out pairs: prompts {summary['prompt_accuracy']:.1f}%, "
        f"attributes {summary['attribute_accuracy']:.1f}% (colour {per['colour']:.0f} / shape {per['shape']:.0f} "
        f"/ direction {per['direction']:.0f})"
    )


def stage_export(args: argparse.Namespace, work: pathlib.Path) -> None:
    vae = type(trained.vae(args.family)).from_pretrained(work / "vae").eval()
    encoder = trained.text_encoder(args.family)
    for role in args.roles:
        model = ema_model(args.family, role, work, args.checkpoints)
        pipe = trained.build_pipeline(args.family, role, model, vae, encoder)
        out = trained.folder(args.family, role)
        pipe.save_pretrained(out, safe_serialization=True)
        call_defaults.write(out, trained.call_defaults(args.family))  # what generate --large/--small reads
        log(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=trained.FAMILY_NAMES, required=True)
    parser.add_argument(
        "--stage",
        choices=("all", "vae", "encode", "large", "small", "export", "eval"),
        default="all",
        help="eval: score both roles' checkpoints (--eval-pairs, --eval-steps) once",
    )
    parser.add_argument("--work", type=pathlib.Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--vae-init", type=pathlib.Path, default=None, help="continue from this VAE folder")
    parser.add_argument(
        "--vae-decoder-only",
        action="store_true",
        help="train only the decoder (with --vae-init: the latent space stays the init's)",
    )
    parser.add_argument("--vae-batch", type=int, default=8)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--videos", type=int, default=12288)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="large/small: continue from the checkpoint in --checkpoints (or the saved weights)",
    )
    parser.add_argument(
        "--checkpoints",
        type=pathlib.Path,
        default=ROOT / "train" / "checkpoints",
        help="where <family>/<role>.pt checkpoints are written and resumed from",
    )
    parser.add_argument(
        "--from-shipped",
        action="store_true",
        help="start from the shipped VAE and transformers instead of training from scratch",
    )
    parser.add_argument(
        "--schedule",
        choices=("cosine", "constant", "cooldown"),
        default="cosine",
        help="learning rate after the 100 warm-up steps (cooldown: constant, then cosine from "
        "--cooldown-from to 0.1 x --lr at --steps)",
    )
    parser.add_argument("--cooldown-from", type=int, default=0)
    parser.add_argument(
        "--focus",
        type=float,
        nargs=3,
        default=None,
        metavar=("LO", "HI", "FRAC"),
        help="Wan: a FRAC share of each batch at sigma LO-HI",
    )
    parser.add_argument(
        "--render-from",
        type=int,
        default=0,
        help="small model: train only on the noise of sampling steps K..50 (0: every noise level)",
    )
    parser.add_argument(
        "--large-layers",
        type=int,
        default=None,
        help="a deeper large model (with --from-shipped: grown from the shipped one)",
    )
    parser.add_argument(
        "--grow-from",
        type=pathlib.Path,
        default=None,
        help="a checkpoints folder whose <family>/<role>.pt EMA weights start the run, grown to "
        "--large-layers (new blocks start as identities)",
    )
    parser.add_argument(
        "--small-size",
        type=int,
        nargs=3,
        default=None,
        metavar=("LAYERS", "HEADS", "FFN"),
        help="the small model's depth, width (heads of 16) and feed-forward width (0: 4 x the width) instead of SIZES'",
    )
    parser.add_argument(
        "--init-from-large",
        type=lambda v: [int(b) for b in v.split(",")],
        default=None,
        metavar="B1,B2,...",
        help="small model: start as the shipped large model with only these blocks (its width: --small-size L 4)",
    )
    parser.add_argument(
        "--distill",
        type=float,
        default=0.0,
        metavar="W",
        help="small model: W x the shipped large model's prediction + (1 - W) x the data as target",
    )
    parser.add_argument(
        "--roles",
        nargs="+",
        choices=trained.ROLES,
        default=list(trained.ROLES),
        help="export: the roles whose folders are written",
    )
    parser.add_argument(
        "--curve",
        type=pathlib.Path,
        default=None,
        help="learning-curve file (default: train/curves/<family>-<role>.csv)",
    )
    parser.add_argument("--eval-every", type=int, default=0, help="learning-curve evaluation period (0: none)")
    parser.add_argument("--eval-pairs", type=int, default=24)
    parser.add_argument("--eval-steps", type=int, default=20)
    args = parser.parse_args()
    if args.focus is not None and args.family != "wan":  # checked before any stage runs
        parser.error("--focus is implemented for Wan's flow-matching sigmas only")
    if args.focus is not None and not (0 <= args.focus[0] < args.focus[1] <= 1 and 0 < args.focus[2] <= 1):
        parser.error(f"--focus LO HI FRAC needs 0 <= LO < HI <= 1 and 0 < FRAC <= 1, got {args.focus}")
    if args.small_size:
        layers, heads, ffn = args.small_size
        trained.SIZES[args.family]["small"] = (layers, heads, ffn or None)
    if args.init_from_large and len(args.init_from_large) != trained.SIZES[args.family]["small"][0]:
        parser.error(
            f"--init-from-large names {len(args.init_from_large)} blocks for a small model of "
            f"{trained.SIZES[args.family]['small'][0]} (--small-size)"
        )
    if not 0 <= args.distill <= 1:
        parser.error(f"--distill W needs 0 <= W <= 1, got {args.distill}")
    if args.large_layers:
        trained.SIZES[args.family]["large"] = (args.large_layers, *trained.SIZES[args.family]["large"][1:])
    torch.set_num_threads(args.threads)
    work = args.work or ROOT / "train" / "runs" / args.family
    work.mkdir(parents=True, exist_ok=True)
    stages = ("vae", "encode", "large", "small", "export") if args.stage == "all" else (args.stage,)
    for stage in stages:
        log(f"{args.family}: stage {stage}")
        if stage == "vae":
            stage_vae(args, work)
        elif stage == "encode":
            stage_encode(args, work)
        elif stage in ("large", "small"):
            stage_transformer(args, work, stage)
        elif stage == "eval":
            for role in trained.ROLES:
                evaluate_checkpoint(args, work, role, 0, None, float("nan"))
        else:
            stage_export(args, work)


if __name__ == "__main__":
    main()
