"""The training recipe of the trained families as a library: the objectives, the teacher, the warm starts and the
checkpoints, which `train_family.py` (the stages) and the measurement scripts of train/ import. Seeded, no command
line of its own; it imports nothing of the package's command line."""

from __future__ import annotations

import math
import pathlib
import time

import numpy as np
import torch

from sr_plugin.lab import task, trained

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: Where the committed training states are (`<family>/<role>.pt`).
CHECKPOINTS = ROOT / "train" / "checkpoints"

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


def save_ema(model, ema, path: pathlib.Path) -> None:
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


def ema_model(family: str, role: str, work: pathlib.Path, checkpoints: pathlib.Path = CHECKPOINTS) -> torch.nn.Module:
    """The role's EMA weights: from its committed checkpoint (so a new machine can export), else from the run's
    last saved folder. The checkpoint's step is left on the model as ``trained_steps``."""
    checkpoint_path = checkpoints / family / f"{role}.pt"
    if checkpoint_path.is_file():
        return checkpoint_model(checkpoint_path, family, role)
    return type(trained.transformer(family, role)).from_pretrained(work / role / "transformer").eval()


def checkpoint_pipeline(
    family: str, role: str, work: pathlib.Path | None = None, checkpoints: pathlib.Path = CHECKPOINTS
):
    """The family's pipeline around the role's EMA weights (`ema_model`) and the run folder's VAE: what the
    learning curve and the diagnostics in train/ score."""
    work = work or ROOT / "train" / "runs" / family
    vae = type(trained.vae(family)).from_pretrained(work / "vae").eval()
    model = ema_model(family, role, work, checkpoints)
    return trained.build_pipeline(family, role, model, vae, trained.text_encoder(family))
