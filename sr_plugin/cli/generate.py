"""`sr-plugin generate`: one video with the switch, its trace as JSON and a plot of the switching metric."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import torch

from ..accel import TeaCacheConfig, accelerate
from ..adapters import adapter_for
from ..switch.api import apply
from ..pipeline.seeded import run_seeded
from ..switch.policy import DEFAULT_DELTA
from . import call_defaults
from ..lab import trained
from .generate_checks import check_arguments
from .outputs import OutputError, UserError, write_checked
from ..lab.trained import first_line as _first_line
from ..lab.tiny import TINY_CALL, tiny_pair

__all__ = ["OutputError", "UserError", "generate", "check_arguments"]


#: ``--dtype`` names (torch's own).
DTYPES = ("float32", "bfloat16", "float16")


def placement(dtype: str | None, device: str | None) -> tuple[Any, Any]:
    """``--dtype`` and ``--device`` as torch objects (None: the default for the weights' source), checked before
    anything loads."""
    torch_dtype = None
    if dtype is not None:
        if dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        torch_dtype = getattr(torch, dtype)
    torch_device = None
    if device is not None:
        try:
            torch_device = torch.device(device)
        except (RuntimeError, TypeError):
            raise UserError(f"--device {device!r} is not a device (e.g. cpu, cuda, cuda:1)") from None
        if torch_device.type == "cuda" and (not torch.cuda.is_available()
                                            or (torch_device.index or 0) >= torch.cuda.device_count()):
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if torch_device.type == "meta":
            raise UserError("--device meta holds no weights; give a real device")
    return torch_dtype, torch_device


def load_models(large: str | None, small: str | None, family: str | None,
                tiny: bool = False, local_files_only: bool = False, dtype: Any = None,
                device: Any = None) -> tuple[Any, Any, str, str, dict[str, Any]]:
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


def _load(large: str | None, small: str | None, family: str | None, tiny: bool, local_files_only: bool,
          dtype: Any) -> tuple[Any, Any, str, str, dict[str, Any]]:
    if (large is None) != (small is None):
        raise UserError("give both --large and --small, or neither (for the trained family shipped in the package)")
    if tiny and large is not None:
        raise UserError("--tiny runs the built-in random pair: not together with --large/--small")
    if family is not None:
        from ..adapters import family as registered_family

        try:
            registered_family(family)
        except ValueError as err:
            raise UserError(str(err)) from err
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
        return pipe, small_model, family, "trained", extra
    from diffusers import DiffusionPipeline

    check_local_pair(large, small, family)  # before the (long) loading of the large model
    for flag, name in (("--large", large), ("--small", small)):
        if not pathlib.Path(name).is_dir() and (local_files_only or _looks_like_a_path(name)):
            what = "the large model" if flag == "--large" else "the small transformer"
            hub = " (and --local-files-only keeps sr-plugin off the Hugging Face Hub)" if local_files_only else ""
            raise UserError(f"cannot load {what} {name!r}: there is no such folder{hub}")
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    try:
        pipe = DiffusionPipeline.from_pretrained(large, dtype=dtype, local_files_only=local_files_only)
    except Exception as err:  # hub errors, missing files, validation errors: all the same to the user
        raise UserError(f"cannot load the large model {large!r}: it is neither a local pipeline folder nor "
                        f"reachable on the Hugging Face Hub ({_first_line(err)})") from err
    try:
        adapter = adapter_for(pipe)
    except TypeError as err:
        raise UserError(str(err)) from err
    found = adapter.key
    if family is not None and family != found:
        raise UserError(f"--family {family} does not match the large model, a {type(pipe).__name__}")
    try:
        small_model = adapter.transformer_class().from_pretrained(small, subfolder="transformer", dtype=dtype,
                                                                  local_files_only=local_files_only)
    except Exception as err:
        raise UserError(f"cannot load the small transformer {small!r} (its 'transformer' subfolder): it is neither "
                        f"local nor reachable on the Hugging Face Hub ({_first_line(err)})") from err
    return pipe, small_model.eval(), found, "pretrained", {}


def _looks_like_a_path(name: str) -> bool:
    """A hub id is "owner/name": anything absolute, relative to here or home, or deeper, is meant as a folder."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _config(path: pathlib.Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _class_name(config: pathlib.Path) -> str | None:
    try:
        return json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


def check_local_pair(large: str, small: str, family: str | None) -> None:
    """For local folders, the families of --large, --small and --family agree, read from their configs before
    anything is loaded (a wrong pair otherwise fails deep inside diffusers with an unrelated message)."""
    from ..adapters import registered_families

    large_dir, small_dir = pathlib.Path(large), pathlib.Path(small)
    adapter = None
    if large_dir.is_dir():
        pipeline_class = _class_name(large_dir / "model_index.json")
        adapter = next((a for a in registered_families() if pipeline_class in a.pipeline_class_names), None)
        if adapter is None:
            raise UserError(f"--large {large!r} is not a pipeline sr_plugin supports (model_index.json names "
                            f"{pipeline_class!r})")
        if family is not None and family != adapter.key:
            raise UserError(f"--family {family} does not match --large, a {pipeline_class}")
    if small_dir.is_dir():
        configs = [small_dir / "transformer" / "config.json", small_dir / "config.json"]
        small_class = next((c for c in map(_class_name, configs) if c), None)
        if small_class is None:
            raise UserError(f"--small {small!r} has no transformer config (transformer/config.json or config.json)")
        expected = adapter.transformer_class_name if adapter is not None else None
        if family is not None and adapter is None:
            from ..adapters import family as registered

            expected = registered(family).transformer_class_name
        if expected is not None and small_class != expected:
            raise UserError(f"--small {small!r} is a {small_class}, but the pipeline needs a {expected}: the two "
                            "models must be of one family")


def plot_trace(trace: list[dict[str, Any]], delta: float | None, switch_step: int | None, path: pathlib.Path,
               title: str) -> None:
    """d and s per step, delta and the switch step marked, the model of each step shaded. The y axis is linear
    within +-delta and logarithmic beyond (symlog), so that s entering (0, delta) stays visible next to the
    jump of d after the switch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["index"] for r in trace]
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in trace:
        ax.axvspan(r["index"] - 0.5, r["index"] + 0.5, color="tab:blue" if r["model"] == "large" else "tab:orange",
                   alpha=0.12, lw=0)
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


def describe_switch(switch: Any) -> str:
    """One phrase: where the call switched and why, with the bounds that applied."""
    if switch is not None and switch.step is None and switch.delta is None:  # a fixed switch at or beyond N
        return (f"did not switch (the fixed switch step {switch.min_switch_step} is not below the "
                f"{switch.num_steps} steps: large only)")
    if switch is not None and switch.step is None and switch.min_switch_step >= switch.num_steps:
        return (f"did not switch (the earliest switch step, {switch.min_switch_step}, is not below the "
                f"{switch.num_steps} steps: large only)")
    if switch is None or switch.step is None:
        bounds = "" if switch is None else f" (bounds {switch.min_switch_step}..{switch.max_switch_step})"
        return f"did not switch{bounds}"
    why = {"fixed": "fixed switch step",
           "delta": f"0 < s < delta={switch.delta} after step {switch.step - 1}",
           "max_switch_step": f"reached max_switch_step={switch.max_switch_step}"}[switch.reason]
    bounds = "" if switch.reason == "fixed" else f", bounds {switch.min_switch_step}..{switch.max_switch_step}"
    return f"switched before step {switch.step} of {switch.num_steps} ({why}{bounds})"


def describe_segments(segments: list[Any]) -> str:
    """One phrase: which model ran which steps ("large for steps 0-9, small 10-34, large 35-49")."""
    parts = [f"{s.role} {s.first_step}-{s.end_step - 1}" if s.end_step - s.first_step > 1 else f"{s.role} {s.first_step}"
             for s in segments]
    return "ran " + ", ".join(parts) if parts else "ran no step"


def _check_size(family: str | None, folder: pathlib.Path | None, height: int | None, width: int | None) -> None:
    """A height or width the family's pipeline and models cannot take, from the folder's configs (no loading)."""
    if folder is None or family is None or (height is None and width is None):
        return
    from ..adapters import family as registered_family

    from ..lab.family_tools import tools_for

    registered_family(family)
    multiple = tools_for(family).size_multiple(_config(folder / "vae" / "config.json"),
                                                       _config(folder / "transformer" / "config.json"))
    for flag, value in (("--height", height), ("--width", width)):
        if multiple and value is not None and value % multiple:
            raise UserError(f"{flag} {value}: this {family} pipeline takes multiples of {multiple} "
                            f"(e.g. {max(multiple, value // multiple * multiple)})")


def generate(prompt: str, out: str, large: str | None = None, small: str | None = None, family: str | None = None,
             delta: float | None = None, switch_step: int | None = None, steps: int | None = None,
             teacache: float | None = None, pab: bool = False, compile: bool = False, seed: int = 0,
             height: int | None = None, width: int | None = None, frames: int | None = None,
             say: Any = print, tiny: bool = False, negative_prompt: str | None = None,
             guidance_scale: float | None = None, fps: int | None = None, fbcache: float | None = None,
             min_switch_step: int | None = None, max_switch_step: int | None = None,
             local_files_only: bool = False, dtype: str | None = None, device: str | None = None,
             max_sequence_length: int | None = None, schedule: str | None = None) -> dict[str, str]:
    """Generate one video; returns the paths written (video, trace JSON, plot PNG). Without call arguments, a
    model folder's ``call_defaults.json`` (`sr_plugin.cli.call_defaults`) says the size, frames, text length,
    guidance and fps it was made for."""
    from ..adapters import family_keys

    out_path = check_arguments(prompt, out, large, tiny, family, family_keys(), teacache, fbcache,
                               min_switch_step, max_switch_step, schedule)
    torch_dtype, torch_device = placement(dtype, device)
    folder = None  # the large model's folder, where its configs and call defaults are read before loading
    if tiny:
        pass
    elif large is None:
        folder = trained.folder(family or "wan", "large")
    elif pathlib.Path(large).is_dir():
        folder = pathlib.Path(large)
    try:
        defaults = call_defaults.read(folder) if folder is not None else {}
    except ValueError as err:
        raise UserError(str(err)) from None
    size_family = family or ("wan" if large is None and not tiny else None)
    if size_family is None and folder is not None:
        from ..adapters import registered_families

        pipeline_class = _class_name(folder / "model_index.json")
        size_family = next((a.key for a in registered_families() if pipeline_class in a.pipeline_class_names), None)
    _check_size(size_family, folder, height if height is not None else defaults.get("height"),
                width if width is not None else defaults.get("width"))
    say("sr-plugin: loading the models ...")
    pipe, small_model, family, source, extra = load_models(large, small, family, tiny, local_files_only,
                                                           torch_dtype, torch_device)
    if source == "tiny":
        say(f"sr-plugin: --tiny: using the built-in tiny {family} pair, whose weights are "
            "RANDOM (the video will be noise; it shows the mechanics only)")
    elif source == "trained":
        say(f"sr-plugin: no --large/--small given: using the trained {family} family shipped in the package "
            "(sr_plugin/trained/), trained on its shapes task")
    try:
        handle = apply(pipe, small_model, delta=delta, switch_step=switch_step, min_switch_step=min_switch_step,
                       max_switch_step=max_switch_step, schedule=schedule, **extra)
        accel = None
        if teacache is not None or pab or compile or fbcache is not None:
            coefficients = None  # published (real checkpoints) or shipped beside the weights (trained families)
            if source == "tiny":  # random weights fit no coefficients: the identity polynomial
                coefficients = "identity"
            accel = accelerate(pipe, teacache=None if teacache is None else TeaCacheConfig(teacache, coefficients),
                               pab=pab, compile=compile, fbcache=fbcache)
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from err
    pipe.set_progress_bar_config(disable=False, desc="denoising")
    call: dict[str, Any] = dict(TINY_CALL[family]) if source == "tiny" else {}
    call.update({k: v for k, v in defaults.items() if k != "fps"})
    call.update({k: v for k, v in (("height", height), ("width", width), ("num_frames", frames),
                                   ("max_sequence_length", max_sequence_length)) if v is not None})
    if steps is not None:
        call["num_inference_steps"] = steps
    if negative_prompt is not None:
        call["negative_prompt"] = negative_prompt
    if guidance_scale is not None:
        call["guidance_scale"] = guidance_scale
    from ..pipeline.timing import loop_timer

    with loop_timer(pipe) as loops:
        start = time.perf_counter()
        video = run_seeded(pipe, prompt, seed, output_type="np", **call)[0]
        seconds = time.perf_counter() - start
    denoise_seconds = loops[-1] if loops else None

    from diffusers.utils import export_to_video


    if fps is None:
        from ..lab.family_tools import tools_for

        fps = defaults.get("fps", tools_for(family).fps)
    write_checked(out_path, lambda: export_to_video(list(video), str(out_path), fps=fps))
    trace = [r.as_dict() for r in handle.trace]
    record = {
        "prompt": prompt, "family": family,
        "weights": {"tiny": "random (built-in tiny pair)", "trained": f"trained family sr_plugin/trained/{family}",
                    "pretrained": {"large": large, "small": small}}[source],
        "num_inference_steps": len(trace), "seed": seed, "seconds": seconds,
        "denoising_seconds": denoise_seconds, "call": {k: v for k, v in call.items() if k != "negative_prompt"},
        "rule": {"schedule": str(handle.schedule)} if schedule is not None else
        {"fixed_switch_step": switch_step} if switch_step is not None else {
            "delta": delta if delta is not None else DEFAULT_DELTA},
        "segments": [s._asdict() for s in handle.segments],
        "switch_step": handle.switch_step, "switch": handle.switch.as_dict() if handle.switch else None,
        "trace": trace, "accelerations": [r.as_dict() for r in accel.trace] if accel else None,
    }
    trace_path = out_path.with_suffix(".trace.json")
    write_checked(trace_path, lambda: trace_path.write_text(json.dumps(record, indent=2)))
    plot_path = out_path.with_suffix(".switch.png")
    why = describe_switch(handle.switch) if schedule is None else describe_segments(handle.segments)
    write_checked(plot_path, lambda: plot_trace(trace, record["rule"].get("delta"), handle.switch_step, plot_path,
                                                f"{family}: {why}"))
    loop = f"denoising {len(trace)} step{'s' if len(trace) != 1 else ''} took {denoise_seconds:.2f} s" \
        if denoise_seconds is not None else f"{len(trace)} step{'s' if len(trace) != 1 else ''}"
    say(f"sr-plugin: {loop}, the whole call {seconds:.2f} s (text encoding and decoding included), {why}; wrote "
        f"{out_path}, {trace_path}, {plot_path}")
    return {"video": str(out_path), "trace": str(trace_path), "plot": str(plot_path)}
