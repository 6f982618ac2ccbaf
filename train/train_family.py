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
import math
import os
import pathlib
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]

from sr_plugin.lab import call_defaults, task, trained  # noqa: E402

COND_DROPOUT = 0.1
LATENT_NOISE = 0.1
OBJECT_WEIGHT = 9.0
WAN_FLOW_SHIFT = 3.0


def wan_u_of_sigma(sigma: float) -> float:
    """The uniform draw that the flow shift maps to ``sigma`` (the inverse of shift u / (1 + (shift - 1) u))."""
    return sigma / (WAN_FLOW_SHIFT - (WAN_FLOW_SHIFT - 1) * sigma)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def render_batch(rng: np.random.Generator, prompts: list[str], n: int) -> tuple[torch.Tensor, list[str]]:
    """n rendered training videos as [n, 3, F, H, W] in [-1, 1], with their prompts."""
    chosen = [prompts[i] for i in rng.integers(0, len(prompts), n)]
    seeds = rng.integers(0, 2**31 - 1, n)
    videos = np.stack([task.render(p, int(s)) for p, s in zip(chosen, seeds)])
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3) * 2 - 1, chosen


def lr_at(
    step: int, total: int, peak: float, warmup: int = 100, schedule: str = "cosine", cooldown_from: int = 0
) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant" or (schedule == "cooldown" and step < cooldown_from):
        return peak  # a constant run can be extended across sessions without changing its past
    if schedule == "cooldown":  # the end of a constant run: cosine from --cooldown-from down to 0.1 x peak
        return peak * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - cooldown_from) / max(total - cooldown_from, 1)))
        )
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))))


# ---------------------------------------------------------------------------------------------------- VAE
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
def encode_held_out(vae, pairs: list[tuple[str, int]]) -> torch.Tensor:
    """The rendered videos of (prompt, seed) pairs, encoded: raw latents [B, C, F, h, w] (the posterior mode)."""
    x = torch.from_numpy(np.stack([task.render(p, s) for p, s in pairs])).permute(0, 4, 1, 2, 3) * 2 - 1
    return vae.encode(x).latent_dist.mode()


@torch.no_grad()
def decode_and_score(vae, raw: torch.Tensor, prompts: list[str]) -> tuple[np.ndarray, list]:
    """Raw latents decoded to videos in [0, 1] and each scored against its prompt by the task's evaluator."""
    from sr_plugin.lab import evaluate

    videos = ((vae.decode(raw).sample.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).numpy()
    return videos, [evaluate.score_video(v, p) for v, p in zip(videos, prompts)]


def decode_unclamped(model, z: torch.Tensor) -> torch.Tensor:
    """The decoder's output before `AutoencoderKLWan` clamps it to [-1, 1]: the clamp's zero gradient would
    otherwise freeze every pixel the decoder overshoots (object pixels stayed dark)."""
    chunks: list[torch.Tensor] = []
    hook = model.decoder.register_forward_hook(lambda module, args, out: chunks.append(out))
    try:
        out = model.decode(z).sample
    finally:
        hook.remove()
    return torch.cat(chunks, dim=2) if chunks and type(model).__name__ == "AutoencoderKLWan" else out


# ------------------------------------------------------------------------------------------------- encode
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
class Objective:
    """The family's noising and target: flow matching (Wan) or v-prediction in the role's space (CogVideoX)."""

    def __init__(
        self,
        family: str,
        role: str,
        pipe,
        render_from: int = 0,
        sampling_steps: int = 50,
        focus: tuple[float, float, float] | None = None,
        distill: float = 0.0,
    ) -> None:
        self.family = family
        # --distill W (small model): the shipped large model's prediction as (a W share of) the target
        self.distill = distill
        self.teacher = Teacher(family) if distill > 0 else None
        # --focus LO HI FRAC (Wan): a FRAC share of each batch draws sigma from [LO, HI] instead of the whole
        # schedule, to train more where the shapes are bound (Wan's turn over between sigma 0.67 and 0.43,
        # train/shape_decided.py); the rest keeps the sampler's own distribution.
        self.focus = focus
        # --render-from K: train only on the noise levels a `sampling_steps` sampler visits from its step K on,
        # the part of the trajectory SR hands a small model when it switches at step K or later.
        self.ceiling = None
        if render_from:
            large = trained.scheduler(family, "large")  # SR's steps are the large pipeline's
            large.set_timesteps(sampling_steps)
            self.ceiling = float(large.timesteps[render_from])
            if family == "cogvideox" and role != "large":  # the same noise in this role's own timesteps
                from sr_plugin.adapters.cogvideox import LatentSpaceMap

                space = LatentSpaceMap(
                    large.alphas_cumprod,
                    trained.scheduler(family, role).alphas_cumprod,
                    trained.COGVIDEOX_SPACE[role][0] / trained.COGVIDEOX_SPACE["large"][0],
                )
                self.ceiling = float(space.coefficients(torch.tensor([self.ceiling]))["t_small"][0])
        if family == "wan":
            self.scale = None
        else:
            self.scale = trained.COGVIDEOX_SPACE[role][0]
            self.abar = trained.scheduler(family, role).alphas_cumprod.float()
            self.rotary = None
            if pipe.transformer.config.use_rotary_positional_embeddings:
                self.rotary = pipe._prepare_rotary_positional_embeddings(task.HEIGHT, task.WIDTH, 3, "cpu")

    def model_latents(self, raw: torch.Tensor, vae) -> torch.Tensor:
        if self.family == "wan":
            mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
            std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
            return (raw - mean) / std
        return (raw * self.scale).permute(0, 2, 1, 3, 4).contiguous()  # CogVideoX: [B, F, C, H, W]

    def raw_latents(self, z: torch.Tensor, vae) -> torch.Tensor:
        """The inverse of `model_latents`: what the VAE decodes."""
        if self.family == "wan":
            mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
            std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
            return z * std + mean
        return (z / self.scale).permute(0, 2, 1, 3, 4)

    def loss(self, model, x0: torch.Tensor, text: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=gen)
        if self.family == "wan":
            u = torch.rand(b, generator=gen)
            if self.ceiling is not None:  # the u whose shifted sigma is the ceiling's sigma
                u = u * wan_u_of_sigma(self.ceiling / 1000)
            if self.focus is not None:
                lo, hi = wan_u_of_sigma(self.focus[0]), wan_u_of_sigma(self.focus[1])
                banded = torch.rand(b, generator=gen) < self.focus[2]
                u = torch.where(banded, lo + (hi - lo) * torch.rand(b, generator=gen), u)
            sigma = WAN_FLOW_SHIFT * u / (1 + (WAN_FLOW_SHIFT - 1) * u)
            s = sigma.view(b, 1, 1, 1, 1)
            xt = (1 - s) * x0 + s * noise
            pred = model(hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=text, return_dict=False)[0]
            return self._mix(pred, noise - x0, xt, sigma * 1000, text)
        top = 1000 if self.ceiling is None else int(self.ceiling) + 1
        t = torch.randint(0, top, (b,), generator=gen)
        a = self.abar[t].view(b, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
        pred = model(
            hidden_states=xt, encoder_hidden_states=text, timestep=t, image_rotary_emb=self.rotary, return_dict=False
        )[0]
        return self._mix(pred, target, xt, t, text)

    def _mix(
        self, pred: torch.Tensor, target: torch.Tensor, xt: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor
    ) -> torch.Tensor:
        """The data loss, or with a teacher (--distill W): W x the distance to the teacher's prediction for the
        same noisy sample plus (1 - W) x the data loss."""
        data = (pred - target).pow(2).mean()
        if self.teacher is None:
            return data
        taught = (pred - self.teacher.target(xt, timestep, text)).pow(2).mean()
        return self.distill * taught + (1 - self.distill) * data


class Teacher:
    """The shipped large model as a distillation teacher: its prediction for the student's own noisy sample,
    expressed as the student's target (Wan: the same flow-matching velocity; CogVideoX: the large model sees the
    sample mapped into its latent space and schedule, and its v-prediction is mapped back into the small one's,
    exactly as the hand-off maps them the other way)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.model = (
            type(trained.transformer(family, "large"))
            .from_pretrained(trained.folder(family, "large") / "transformer")
            .eval()
            .requires_grad_(False)
        )
        self.space = None
        if family == "cogvideox":
            from sr_plugin.adapters.cogvideox import LatentSpaceMap

            # small -> large: the map the hand-off uses, with the roles swapped
            self.space = LatentSpaceMap(
                trained.scheduler(family, "small").alphas_cumprod,
                trained.scheduler(family, "large").alphas_cumprod,
                trained.COGVIDEOX_SPACE["large"][0] / trained.COGVIDEOX_SPACE["small"][0],
            )
            pipe = trained.build_pipeline(
                family, "large", self.model, trained.vae(family), trained.text_encoder(family)
            )
            self.rotary = pipe._prepare_rotary_positional_embeddings(task.HEIGHT, task.WIDTH, 3, "cpu")

    @torch.no_grad()
    def target(self, xt: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.space is None:
            return self.model(hidden_states=xt, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        coef = self.space.coefficients(timestep)
        shape = (-1, 1, 1, 1, 1)
        out = self.model(
            hidden_states=xt * coef["k"].float().view(shape),
            timestep=coef["t_small"].float(),
            encoder_hidden_states=text,
            image_rotary_emb=self.rotary,
            return_dict=False,
        )[0]
        return coef["coef_x"].float().view(shape) * xt + coef["coef_v"].float().view(shape) * out


def init_from_large(model: torch.nn.Module, family: str, blocks: list[int]) -> None:
    """Start a small model as a shortened copy of the shipped large one: every tensor outside the blocks whose
    shape matches (embeddings, time and text projections, output head), and large block ``blocks[i]`` as small
    block ``i`` (the small model must have the large one's width)."""
    large = type(model).from_pretrained(trained.folder(family, "large") / "transformer").state_dict()
    own = model.state_dict()
    prefix = "transformer_blocks." if family == "cogvideox" else "blocks."
    copied = {}
    for key, value in own.items():
        source = key
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            source = f"{prefix}{blocks[int(index)]}.{rest}"
            if ".net.0.proj." in key and large[source].shape != value.shape:  # a narrower feed-forward
                copied.update(prune_feed_forward(large, source, key, value.shape[0]))
                continue
        if source in large and large[source].shape == value.shape:
            copied.setdefault(key, large[source])
    model.load_state_dict(copied, strict=False)
    log(f"small: {len(copied)} of {len(own)} tensors copied from the shipped large model (blocks {blocks})")


def prune_feed_forward(large: dict[str, torch.Tensor], source: str, key: str, width: int) -> dict[str, torch.Tensor]:
    """A large block's feed-forward cut to ``width`` hidden units: the units with the largest product of their
    input and output weights' norms (the input projection ``net.0.proj`` and the output ``net.2``)."""
    w_in, b_in = large[source.replace(".bias", ".weight")], large[source.replace(".weight", ".bias")]
    out = source.replace(".net.0.proj.", ".net.2.").replace(".bias", ".weight")
    w_out = large[out]
    keep = (w_in.norm(dim=1) * w_out.norm(dim=0)).topk(width).indices.sort().values
    key_w, key_b = key.replace(".bias", ".weight"), key.replace(".weight", ".bias")
    out_key = key_w.replace(".net.0.proj.", ".net.2.")
    return {
        key_w: w_in[keep],
        key_b: b_in[keep],
        out_key: w_out[:, keep],
        out_key.replace(".weight", ".bias"): large[out.replace(".weight", ".bias")],
    }


def grow(shipped: torch.nn.Module, model: torch.nn.Module) -> None:
    """Load a shallower model into ``model``'s first blocks; the blocks after them start as identities (their
    residual branches' output projections zero), so the deeper model begins as the shipped one."""

    def blocks_of(m: torch.nn.Module) -> torch.nn.ModuleList:  # CogVideoX: transformer_blocks, Wan: blocks
        return getattr(m, "transformer_blocks", None) or m.blocks

    model.load_state_dict(shipped.state_dict(), strict=False)
    depth, blocks = len(blocks_of(shipped)), blocks_of(model)
    with torch.no_grad():
        for block in list(blocks)[depth:]:
            for name, module in block.named_modules():
                if name.endswith(("to_out.0", "net.2")):  # attention and feed-forward outputs
                    module.weight.zero_()
                    module.bias.zero_()
    log(f"grown from {depth} to {len(blocks)} blocks (new blocks start as identities)")


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
            _save_ema(model, ema, work / role / "transformer")
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


def _save_ema(model, ema, path: pathlib.Path) -> None:
    live = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, e in zip(model.parameters(), ema):
            p.copy_(e)
    model.eval().save_pretrained(path)
    with torch.no_grad():
        for p, v in zip(model.parameters(), live):
            p.copy_(v)
    model.train()


# ------------------------------------------------------------------------------------------------- export
def checkpoint_model(path: pathlib.Path, family: str, role: str) -> torch.nn.Module:
    """A checkpoint's EMA weights in a model of the checkpoint's own depth and width (a pilot's need not be
    SIZES'). The checkpoint's step is left on the model as ``trained_steps``."""
    checkpoint = torch.load(path)
    blocks = [k for k in checkpoint["model"] if k.startswith(("blocks.", "transformer_blocks."))]
    depth = 1 + max(int(k.split(".")[1]) for k in blocks)
    query = next(k for k in blocks if k.endswith("attn1.to_q.weight"))  # [heads x head dim, heads x head dim]
    heads = checkpoint["model"][query].shape[0] // trained.HEAD_DIM
    ffn = checkpoint["model"][next(k for k in blocks if k.endswith("net.0.proj.weight"))].shape[0]
    model = trained.transformer(family, role, layers=depth, heads=heads, ffn=ffn)
    model.load_state_dict(checkpoint["model"])
    with torch.no_grad():
        for p, e in zip(model.parameters(), checkpoint["ema"]):
            p.copy_(e)
    log(f"{role}: EMA weights of step {checkpoint['step']} from {path} ({depth} blocks, {heads} heads, ffn {ffn})")
    model.trained_steps = checkpoint["step"]
    return model.eval()


def ema_model(args: argparse.Namespace, work: pathlib.Path, role: str) -> torch.nn.Module:
    """The role's EMA weights: from its committed checkpoint (so a new machine can export), else from the run's
    last saved folder. The checkpoint's step is left on the model as ``trained_steps``."""
    checkpoint_path = args.checkpoints / args.family / f"{role}.pt"
    if checkpoint_path.is_file():
        return checkpoint_model(checkpoint_path, args.family, role)
    return type(trained.transformer(args.family, role)).from_pretrained(work / role / "transformer").eval()


def checkpoint_pipeline(
    family: str, role: str, work: pathlib.Path | None = None, checkpoints: pathlib.Path = ROOT / "train" / "checkpoints"
):
    """The family's pipeline around the role's EMA weights (`ema_model`) and the run folder's VAE: what the
    learning curve and the diagnostics in train/ score."""
    work = work or ROOT / "train" / "runs" / family
    vae = type(trained.vae(family)).from_pretrained(work / "vae").eval()
    model = ema_model(argparse.Namespace(checkpoints=checkpoints, family=family), work, role)
    return trained.build_pipeline(family, role, model, vae, trained.text_encoder(family))


def stage_export(args: argparse.Namespace, work: pathlib.Path) -> None:
    vae = type(trained.vae(args.family)).from_pretrained(work / "vae").eval()
    encoder = trained.text_encoder(args.family)
    for role in args.roles:
        model = ema_model(args, work, role)
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
