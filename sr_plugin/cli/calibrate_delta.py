"""`sr-plugin calibrate-delta` on a trained family: sweep on training prompts, pick for a target, and optionally
rerun the pick on held-out prompts to see the promise kept."""

from __future__ import annotations

import random
from typing import Any

from ..calibration.delta import calibrate_delta, check_promise
from ..lab import evaluate, task, trained

#: Training prompts are drawn with this seed (the held-out set stays for checking the pick).
PROMPT_SEED = 7


def run_calibrate_delta(
    family: str,
    prompts: int,
    steps: int,
    deltas: list[float],
    switch_steps: list[int],
    min_ssim: float | None,
    max_time_ratio: float | None,
    say: Any = print,
    check_prompts: int = 0,
) -> tuple[Any, Any, Any]:
    """The sweep, the pick and (with ``check_prompts``) the pick's rerun on held-out prompts: ``(picked, sweep,
    check or None)``."""
    if check_prompts < 0 or check_prompts > task.HELD_OUT_SIZE:
        raise ValueError(f"--check-prompts must be between 0 and {task.HELD_OUT_SIZE} (the held-out prompts)")
    pipe, small, extra = trained.load(family)
    chosen = random.Random(PROMPT_SEED).sample(task.training_prompts(), prompts)
    call = dict(trained.CALL, guidance_scale=trained.GUIDANCE[family])
    say(f"sr-plugin calibrate-delta: {family}, {prompts} training prompt{'' if prompts == 1 else 's'}, {steps} steps")
    picked, sweep = calibrate_delta(
        pipe,
        small,
        chosen,
        min_ssim=min_ssim,
        max_time_ratio=max_time_ratio,
        deltas=deltas,
        switch_steps=switch_steps,
        num_inference_steps=steps,
        apply_kwargs=extra,
        scorer=lambda video, prompt: evaluate.score_video(video, prompt).right,
        say=say,
        **call,
    )
    say(sweep.table())
    if sweep.step_ratio_doubt:
        say(
            f"warning: {sweep.step_ratio_doubt}. The machine was busy during the sweep: its time figures and the "
            "pick they led to are unreliable; rerun on a quiet machine"
        )
    say(f"picked: {picked.setting} (speed-up {picked.speedup:.2f}x, SSIM {picked.ssim:.4f})")
    check = None
    if check_prompts:
        held_out = [p for p, _ in task.held_out()[:check_prompts]]
        check = check_promise(pipe, small, picked, held_out, num_inference_steps=steps, apply_kwargs=extra, **call)
        spread = "" if not check.promised_relative_se else f" ± {check.promised_relative_se:.1%}"
        say(
            f"rerun on {check_prompts} held-out prompt{'' if check_prompts == 1 else 's'}: "
            f"{check.measured_speedup:.2f}x measured against "
            f"{check.promised_speedup:.2f}x{spread} promised ({check.relative_error:+.1%}); mean switch step "
            f"{check.measured_mean_switch_step} against {check.promised_mean_switch_step}"
        )
    return picked, sweep, check
