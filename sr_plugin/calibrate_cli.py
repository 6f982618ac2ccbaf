"""`sr-plugin calibrate-delta` on a trained family: sweep on training prompts, pick for a target."""

from __future__ import annotations

import random
from typing import Any

from . import evaluate, task, trained
from .delta_calibration import calibrate_delta

#: Training prompts are drawn with this seed (the held-out set stays for checking the pick).
PROMPT_SEED = 7


def run_calibrate_delta(family: str, prompts: int, steps: int, deltas: list[float], switch_steps: list[int],
                        min_ssim: float | None, max_time_ratio: float | None, say: Any = print) -> Any:
    pipe, small, extra = trained.load(family)
    chosen = random.Random(PROMPT_SEED).sample(task.training_prompts(), prompts)
    call = dict(trained.CALL, guidance_scale=trained.GUIDANCE[family])
    say(f"sr-plugin calibrate-delta: {family}, {prompts} training prompts, {steps} steps")
    picked, sweep = calibrate_delta(
        pipe, small, chosen, min_ssim=min_ssim, max_time_ratio=max_time_ratio, deltas=deltas,
        switch_steps=switch_steps, num_inference_steps=steps, apply_kwargs=extra,
        scorer=lambda video, prompt: evaluate.score_video(video, prompt).right, say=say, **call)
    say(sweep.table())
    say(f"picked: {picked.setting} (speed-up {picked.speedup:.2f}x, SSIM {picked.ssim:.4f})")
    return picked
