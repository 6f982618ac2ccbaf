"""`sr-plugin generate`: one video with the switch (or a cooperation schedule), its trace as JSON and a plot of the
switching metric. `GenerateOptions` (built by the parser) says what was asked; `check_options` has checked it before
anything loads."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import torch

from ..accel import TeaCacheConfig, accelerate
from ..adapters import adapter_for
from ..lab import call_defaults, trained
from ..lab.shipped import shipped_schedule
from ..lab.tiny import TINY_CALL, tiny_pair
from ..lab.trained import first_line as _first_line
from ..pipeline.seeded import run_seeded
from ..switch.api import apply
from ..switch.policy import DEFAULT_DELTA
from .generate_checks import DTYPES, GenerateOptions, check_local_pair, check_options, placement
from .outputs import OutputError, UserError, write_checked

__all__ = ["DTYPES", "GenerateOptions", "OutputError", "UserError", "check_local_pair", "generate", "placement"]


def load_models(
    large: str | None,
    small: str | None,
    family: str | None,
    tiny: bool = False,
    local_files_only: bool = False,
    dtype: Any = None,
    device: Any = None,
) -> tuple[Any, Any, str, str, dict[str, Any]]:
    """(pipe, small transformer, family, source, apply options) from model ids or paths, the trained family
    shipped in the package (source "trained"), or the random tiny pair (source "tiny"). ``dtype``/``device``:
    where the weights go (defaults: pretrained models in bfloat16 on CUDA when there is one, else float32 on the
    CPU; the tiny and trained pairs in float32 on the CPU)."""
    pipe, small_model, family, source, extra = _load(large, small, family, tiny, local_files_only, dtype)
    if device is None and source == "pretrained" and torch.cuda.is_available():
        device = torch.device("cuda")
    if dtype is not None and source == "tiny":  # built in code: no loader to give the dtype to
        pipe.to(dtype=dtype)
        small_model.to(dtype=dtype)
    if device is not None:
        pipe.to(device)
        small_model.to(device)
    return pipe, small_model, family, source, extra


def _load(
    large: str | None, small: str | None, family: str | None, tiny: bool, local_files_only: bool, dtype: Any
) -> tuple[Any, Any, str, str, dict[str, Any]]:
    if tiny:
        family = family or "wan"
        pipe, small_model = tiny_pair(family)
        return pipe, small_model, family, "tiny", {}
    if large is None:
        family = family or "wan"
        try:
            pipe, small_model, extra = trained.load(family, dtype if dtype is not None else torch.float32)
        except trained.TrainedFamilyError as err:
            raise UserError(str(err)) from err
        return pipe, small_model, family, "trained", {**extra}
    return _load_pretrained(large, small, family, local_files_only, dtype)


def _load_pretrained(
    large: str, small: str, family: str | None, local_files_only: bool, dtype: Any
) -> tuple[Any, Any, str, str, dict[str, Any]]:
    from diffusers import DiffusionPipeline

    check_local_pair(large, small, family)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    try:
        pipe = DiffusionPipeline.from_pretrained(large, dtype=dtype, local_files_only=local_files_only)
    except Exception as err:  # hub errors, missing files, validation errors: all the same to the user
        raise UserError(f"cannot load the large model {large!r}: {_why_not_loaded(err)}") from err
    try:
        adapter = adapter_for(pipe)
    except TypeError as err:
        raise UserError(str(err)) from err
    if family is not None and family != adapter.key:
        raise UserError(f"--family {family} does not match the large model, a {type(pipe).__name__}")
    try:
        small_model = adapter.transformer_class().from_pretrained(
            small, subfolder="transformer", dtype=dtype, local_files_only=local_files_only
        )
    except Exception as err:
        raise UserError(
            f"cannot load the small transformer {small!r} (its 'transformer' subfolder): {_why_not_loaded(err)}"
        ) from err
    return pipe, small_model.eval(), adapter.key, "pretrained", {}


def _why_not_loaded(err: BaseException) -> str:
    """What went wrong loading a model, in one sentence: the library's message without its pointers to a stack
    trace the user does not see."""
    text = _first_line(err)
    if "not fully cached locally" in text or "outgoing traffic has been disabled" in text or "offline" in text.lower():
        return (
            "it is not a local folder and not in the Hugging Face cache, and the Hub cannot be reached (offline); "
            "download it first, or give a local folder"
        )
    for noise in (
        " Please check out the root cause in the stacktrace above.",
        "Please check out the root cause in the stacktrace above.",
    ):
        text = text.replace(noise, "")
    return f"it is neither a local pipeline folder nor reachable on the Hugging Face Hub ({text.strip()})"


def plot_trace(
    trace: list[dict[str, Any]], delta: float | None, switch_step: int | None, path: pathlib.Path, title: str
) -> None:
    """d and s per step, delta and the switch step marked, the model of each step shaded. The y axis is linear
    within +-delta and logarithmic beyond (symlog), so that s entering (0, delta) stays visible next to the
    jump of d after the switch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["index"] for r in trace]
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in trace:
        ax.axvspan(
            r["index"] - 0.5,
            r["index"] + 0.5,
            color="tab:blue" if r["model"] == "large" else "tab:orange",
            alpha=0.12,
            lw=0,
        )
    ax.plot(steps, [r["d"] for r in trace], "o-", label="d (relative change of x0)")
    ax.plot(steps, [r["s"] for r in trace], "s-", label="s = d[j-1] - d[j]")
    if delta is not None:
        ax.axhline(delta, color="gray", ls="--", label=f"delta = {delta}")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_yscale("symlog", linthresh=delta if delta is not None else 1e-2)
    if switch_step is not None:
        ax.axvline(switch_step - 0.5, color="red", label=f"switch before step {switch_step}")
    ax.set_xlabel("step (shading: blue = large model, orange = small model)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def describe_switch(switch: Any, segments: list[Any]) -> str:
    """One phrase: where the call switched and why, with the bounds that applied."""
    if switch is None:
        return f"did not hand over to the small model ({describe_segments(segments)})"
    why = {
        "fixed": "fixed switch step",
        "delta": f"0 < s < delta={switch.delta} after step {switch.step - 1}",
        "max_switch_step": f"reached max_switch_step={switch.max_switch_step}",
    }[switch.reason]
    bounds = "" if switch.reason == "fixed" else f", bounds {switch.min_switch_step}..{switch.max_switch_step}"
    return f"switched before step {switch.step} of {switch.num_steps} ({why}{bounds})"


def describe_segments(segments: list[Any]) -> str:
    """One phrase: which model ran which steps ("large for steps 0-9, small 10-34, large 35-49")."""
    parts = [
        f"{s.role} {s.first_step}-{s.end_step - 1}" if s.end_step - s.first_step > 1 else f"{s.role} {s.first_step}"
        for s in segments
    ]
    return "ran " + ", ".join(parts) if parts else "ran no step"


def _set_up(
    pipe: Any, small_model: Any, options: GenerateOptions, source: str, extra: dict[str, Any]
) -> tuple[Any, Any]:
    """The switch (or schedule) and the accelerations asked for; a refusal is the user's error, in their terms."""
    try:
        handle = apply(
            pipe,
            small_model,
            delta=options.delta,
            switch_step=options.switch_step,
            min_switch_step=options.min_switch_step,
            max_switch_step=options.max_switch_step,
            schedule=options.schedule,
            **extra,
        )
        accel = None
        if options.teacache is not None or options.pab or options.compile or options.fbcache is not None:
            # published coefficients (real checkpoints) or shipped beside the weights (trained families); random
            # tiny weights fit none: the identity polynomial
            coefficients = "identity" if source == "tiny" else None
            teacache = None if options.teacache is None else TeaCacheConfig(options.teacache, coefficients)
            accel = accelerate(
                pipe, teacache=teacache, pab=options.pab, compile=options.compile, fbcache=options.fbcache
            )
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from err
    return handle, accel


def _call_arguments(options: GenerateOptions, family: str, source: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """The pipeline call: the tiny pair's or the folder's defaults, then what was given."""
    call: dict[str, Any] = dict(TINY_CALL[family]) if source == "tiny" else {}
    call.update({k: v for k, v in defaults.items() if k != "fps"})
    call.update(
        {
            k: v
            for k, v in (
                ("height", options.height),
                ("width", options.width),
                ("num_frames", options.frames),
                ("max_sequence_length", options.max_sequence_length),
                ("num_inference_steps", options.steps),
                ("negative_prompt", options.negative_prompt),
                ("guidance_scale", options.guidance_scale),
            )
            if v is not None
        }
    )
    return call


def generate(options: GenerateOptions, say: Any = print) -> dict[str, str]:
    """Generate one video; returns the paths written (video, trace JSON, plot PNG). Without call arguments, a
    model folder's ``call_defaults.json`` (`sr_plugin.lab.call_defaults`) says the size, frames, text length,
    guidance and fps it was made for."""
    from ..adapters import family_keys

    out_path = check_options(options, family_keys())
    torch_dtype, torch_device = placement(options.dtype, options.device)
    folder = options.folder()
    defaults = call_defaults.read(folder) if folder is not None else {}
    say("sr-plugin: loading the models ...")
    pipe, small_model, family, source, extra = load_models(
        options.large, options.small, options.family, options.tiny, options.local_files_only, torch_dtype, torch_device
    )
    if source == "tiny":
        say(
            f"sr-plugin: --tiny: using the built-in tiny {family} pair, whose weights are "
            "RANDOM (the video will be noise; it shows the mechanics only)"
        )
    elif source == "trained":
        say(
            f"sr-plugin: no --large/--small given: using the trained {family} family shipped in the package "
            "(sr_plugin/trained/), trained on its shapes task"
        )
        shipped = shipped_schedule(family)
        if not options.rule_given and shipped is not None:
            options = dataclasses.replace(options, schedule=shipped)
            say(f"sr-plugin: its shipped calibrated schedule {shipped} (--delta for SRDiffusion's rule)")
    handle, accel = _set_up(pipe, small_model, options, source, extra)
    pipe.set_progress_bar_config(disable=False, desc="denoising")
    call = _call_arguments(options, family, source, defaults)
    from ..pipeline.timing import loop_timer

    with loop_timer(pipe) as loops:
        start = time.perf_counter()
        video = run_seeded(pipe, options.prompt, options.seed, output_type="np", **call)[0]
        seconds = time.perf_counter() - start
    fps = options.fps if options.fps is not None else defaults.get("fps", _family_fps(family))
    return _write_outputs(
        out_path, video, fps, options, family, source, call, handle, accel, seconds, loops[-1] if loops else None, say
    )


def _family_fps(family: str) -> int:
    from ..lab.family_tools import tools_for

    return tools_for(family).fps


def _write_outputs(
    out_path: pathlib.Path,
    video: Any,
    fps: int,
    options: GenerateOptions,
    family: str,
    source: str,
    call: dict[str, Any],
    handle: Any,
    accel: Any,
    seconds: float,
    denoise_seconds: float | None,
    say: Any,
) -> dict[str, str]:
    """The video, its trace (JSON) and the plot of the metric, each checked once written."""
    from diffusers.utils import export_to_video

    write_checked(out_path, lambda: export_to_video(list(video), str(out_path), fps=fps))
    trace = [r.as_dict() for r in handle.trace]
    rule = (
        {"schedule": str(handle.schedule)}
        if options.schedule is not None
        else {"fixed_switch_step": options.switch_step}
        if options.switch_step is not None
        else {"delta": options.delta if options.delta is not None else DEFAULT_DELTA}
    )
    record = {
        "prompt": options.prompt,
        "family": family,
        "weights": {
            "tiny": "random (built-in tiny pair)",
            "trained": f"trained family sr_plugin/trained/{family}",
            "pretrained": {"large": options.large, "small": options.small},
        }[source],
        "num_inference_steps": len(trace),
        "seed": options.seed,
        "seconds": seconds,
        "denoising_seconds": denoise_seconds,
        "call": {k: v for k, v in call.items() if k != "negative_prompt"},
        "rule": rule,
        "segments": [s._asdict() for s in handle.segments],
        "switch_step": handle.switch_step,
        "switch": handle.switch.as_dict() if handle.switch else None,
        "trace": trace,
        "accelerations": [r.as_dict() for r in accel.trace] if accel else None,
    }
    trace_path = out_path.with_suffix(".trace.json")
    write_checked(trace_path, lambda: trace_path.write_text(json.dumps(record, indent=2)))
    plot_path = out_path.with_suffix(".switch.png")
    why = (
        describe_switch(handle.switch, handle.segments)
        if options.schedule is None
        else describe_segments(handle.segments)
    )
    write_checked(
        plot_path, lambda: plot_trace(trace, rule.get("delta"), handle.switch_step, plot_path, f"{family}: {why}")
    )
    steps = f"{len(trace)} step{'s' if len(trace) != 1 else ''}"
    loop = f"denoising {steps} took {denoise_seconds:.2f} s" if denoise_seconds is not None else steps
    say(
        f"sr-plugin: {loop}, the whole call {seconds:.2f} s (text encoding and decoding included), {why}; wrote "
        f"{out_path}, {trace_path}, {plot_path}"
    )
    return {"video": str(out_path), "trace": str(trace_path), "plot": str(plot_path)}
