"""The main job on the built-in tiny pair: a baseline run and an SR run, with the trace and timings."""

from __future__ import annotations

import time
from typing import Any

import torch

from .api import apply
from .tiny import TINY_CALL, tiny_pair

DEMO_PROMPT = "a red fox runs across a snowy field at dawn"


def timed_call(pipe: Any, family: str, steps: int, seed: int, **kwargs: Any) -> tuple[torch.Tensor, float]:
    args = dict(TINY_CALL[family], prompt=DEMO_PROMPT, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(seed))
    args.update(kwargs)
    start = time.perf_counter()
    frames = pipe(**args).frames
    return frames, time.perf_counter() - start


def format_trace(trace: list[Any]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:+.4f}"  # noqa: E731
    lines = [f"{'step':>4}  {'timestep':>8}  {'model':<5}  {'d':>8}  {'s':>8}"]
    lines += [f"{r.index:>4}  {r.timestep:>8.1f}  {r.model:<5}  {fmt(r.d):>8}  {fmt(r.s):>8}" for r in trace]
    return "\n".join(lines)


def run_demo(family: str = "wan", steps: int = 20, delta: float | None = None, switch_step: int | None = None,
             seed: int = 0, out: Any = print) -> dict[str, Any]:
    """Baseline then SR on the tiny ``family`` pair; prints the trace and timings, returns the figures."""
    pipe, small = tiny_pair(family)
    out(f"sr-plugin demo: tiny {family} pair built in code; its weights are RANDOM, so the video is noise.")
    out("It shows the mechanics: who runs which step, the switching metric, and what the switch saves.")
    timed_call(pipe, family, 2, seed)  # warm-up (allocations, lazy init)
    base, t_base = timed_call(pipe, family, steps, seed)
    handle = apply(pipe, small, delta=delta, switch_step=switch_step)
    timed_call(pipe, family, 2, seed)
    sr, t_sr = timed_call(pipe, family, steps, seed)
    out(format_trace(handle.trace))
    k = handle.switch_step
    out(f"switch step: {k}  (rule: delta={delta if delta is not None else 0.01}"
        f"{'' if switch_step is None else f', fixed k={switch_step}'})")
    out(f"baseline (large only): {t_base:.3f} s   SR: {t_sr:.3f} s   speed-up: {t_base / t_sr:.2f}x "
        f"(CPU, tiny models: fixed per-call costs dominate)")
    out(f"max |SR - baseline| in latents: {(sr - base).abs().max().item():.4f}")
    handle.remove()
    return {"family": family, "switch_step": k, "baseline_s": t_base, "sr_s": t_sr,
            "trace": [r.as_dict() for r in handle.trace]}
