"""What `sr-plugin generate` was asked for (`GenerateOptions`, built by the parser) and every check of it that needs no
model: light (no diffusers; torch only where a device or a model folder's patch size must be read), so that the
command line runs them at parse time, before anything heavy is imported or loaded, with argparse's usage line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
from typing import Any

from ..lab import call_defaults, task
from .outputs import UserError, check_output

#: The most denoising steps a call may take: the training schedules have 1,000 timesteps.
MAX_STEPS = 1000
#: ``--dtype`` names (torch's own).
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """Everything `generate` takes, by the command line's names (``frames`` is ``--frames``)."""

    prompt: str
    out: str
    large: str | None = None
    small: str | None = None
    family: str | None = None
    tiny: bool = False
    local_files_only: bool = False
    delta: float | None = None
    switch_step: int | None = None
    schedule: str | None = None
    min_switch_step: int | None = None
    max_switch_step: int | None = None
    steps: int | None = None
    seed: int = 0
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    fps: int | None = None
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    max_sequence_length: int | None = None
    teacache: float | None = None
    fbcache: float | None = None
    pab: bool = False
    compile: bool = False
    dtype: str | None = None
    device: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerateOptions:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @property
    def rule_given(self) -> bool:
        """Whether the switching rule was given (--delta, --switch-step or --schedule)."""
        return any(v is not None for v in (self.delta, self.switch_step, self.schedule))

    @property
    def source(self) -> str:
        """Where the models come from: "tiny", "trained" or "pretrained"."""
        return "tiny" if self.tiny else "trained" if self.large is None else "pretrained"

    def folder(self) -> pathlib.Path | None:
        """The large model's folder, where its configs and call defaults are read before loading."""
        if self.tiny:
            return None
        if self.large is None:
            from ..lab import trained

            return trained.folder(self.family or "wan", "large")
        return pathlib.Path(self.large) if pathlib.Path(self.large).is_dir() else None


def check_options(options: GenerateOptions, known_families: tuple[str, ...] | None = None) -> pathlib.Path:
    """Every check that needs no model, before anything heavy is imported or loaded (the CLI runs it at parse
    time): the output files, the models' source, the prompt's words for the trained families, the family's name,
    the schedule and the switch bounds, the step count, the accelerations that exclude each other, the device and
    the size. Returns the video's path."""
    out_path = _check_out(options.out)
    _check_source(options)
    if options.family is not None and known_families is not None and options.family not in known_families:
        raise UserError(f"unknown family {options.family!r}; known: {', '.join(known_families)}")
    if options.source == "trained":
        try:
            task.parse(options.prompt)
        except ValueError as err:
            raise UserError(f"{err}. (The trained families know only their task; --tiny takes any prompt.)") from err
    _check_switch(options)
    if options.steps is not None and not 1 <= options.steps <= MAX_STEPS:
        raise UserError(
            f"--steps must be between 1 and {MAX_STEPS} (the schedules' training timesteps), got {options.steps}"
        )
    if options.teacache is not None and options.fbcache is not None:
        raise UserError("--teacache and --fbcache both cache the transformer blocks: choose one")
    if options.large is not None:
        check_local_pair(options.large, options.small, options.family)
    placement(options.dtype, options.device)
    _check_size(options)
    return out_path


def _check_out(out: str) -> pathlib.Path:
    if not str(out).strip():
        raise UserError("--out is empty: name the video file to write, e.g. --out video.mp4")
    out_path = pathlib.Path(out)
    try:
        check_output(
            out_path, (".mp4",), companions=(out_path.with_suffix(".trace.json"), out_path.with_suffix(".switch.png"))
        )
    except ValueError as err:
        raise UserError(f"--out: {err}") from None
    return out_path


def _check_source(options: GenerateOptions) -> None:
    large, small = options.large, options.small
    if (large is None) != (small is None):
        raise UserError("give both --large and --small, or neither (for the trained family shipped in the package)")
    if options.tiny and large is not None:
        raise UserError("--tiny runs the built-in random pair: not together with --large/--small")
    if large is None:
        return
    if pathlib.Path(large).resolve() == pathlib.Path(small).resolve() or large == small:
        raise UserError(
            f"--large and --small name the same model ({large!r}): the small model must be a smaller "
            "one of the same family (for example Wan2.1 1.3B for 14B)"
        )
    for flag, name in (("--large", large), ("--small", small)):
        if not pathlib.Path(name).is_dir() and (options.local_files_only or looks_like_a_path(name)):
            what = "the large model" if flag == "--large" else "the small transformer"
            hub = (
                " (and --local-files-only keeps sr-plugin off the Hugging Face Hub)" if options.local_files_only else ""
            )
            raise UserError(f"cannot load {what} {name!r}: there is no such folder{hub}")


def _check_switch(options: GenerateOptions) -> None:
    lo, hi = options.min_switch_step, options.max_switch_step
    if lo is not None and hi is not None and lo > hi:
        raise UserError(f"--min-switch-step {lo} is above --max-switch-step {hi}")
    if options.schedule is not None:
        from ..switch.schedule import Schedule

        try:
            Schedule.parse(options.schedule).with_bounds(lo, hi)
        except (ValueError, TypeError) as err:
            raise UserError(f"--schedule: {err}") from None


def looks_like_a_path(name: str) -> bool:
    """A hub id is "owner/name": anything absolute, relative to here or home, or deeper, is meant as a folder."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def class_name(config: pathlib.Path) -> str | None:
    return read_json(config).get("_class_name")


def check_local_pair(large: str, small: str | None, family: str | None) -> None:
    """For local folders, the families of --large, --small and --family agree, read from their configs before
    anything is loaded (a wrong pair otherwise fails deep inside diffusers with an unrelated message)."""
    from ..adapters import registered_families

    large_dir = pathlib.Path(large)
    adapter = None
    if large_dir.is_dir():
        if not (large_dir / "model_index.json").is_file():
            raise UserError(
                f"--large {large!r} is a folder without model_index.json: give a diffusers pipeline folder "
                "(what save_pretrained writes), not a model's subfolder"
            )
        pipeline_class = class_name(large_dir / "model_index.json")
        adapter = next((a for a in registered_families() if pipeline_class in a.pipeline_class_names), None)
        if adapter is None:
            supported = ", ".join(n for a in registered_families() for n in a.pipeline_class_names)
            raise UserError(
                f"--large {large!r} holds a {pipeline_class or 'pipeline of unknown class'}; sr-plugin "
                f"supports {supported}"
            )
        if family is not None and family != adapter.key:
            raise UserError(f"--family {family} does not match --large, a {pipeline_class}")
    small_dir = pathlib.Path(small) if small is not None else None
    if small_dir is not None and small_dir.is_dir():
        configs = [small_dir / "transformer" / "config.json", small_dir / "config.json"]
        small_class = next((c for c in map(class_name, configs) if c), None)
        if small_class is None:
            raise UserError(f"--small {small!r} has no transformer config (transformer/config.json or config.json)")
        expected = adapter.transformer_class_name if adapter is not None else None
        if family is not None and adapter is None:
            from ..adapters import family as registered

            expected = registered(family).transformer_class_name
        if expected is not None and small_class != expected:
            raise UserError(
                f"--small {small!r} is a {small_class}, but the pipeline needs a {expected}: the two "
                "models must be of one family"
            )


def placement(dtype: str | None, device: str | None) -> tuple[Any, Any]:
    """``--dtype`` and ``--device`` as torch objects (None: the default for the weights' source), checked before
    anything loads."""
    if dtype is None and device is None:
        return None, None
    import torch

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
        if torch_device.type == "cuda" and (
            not torch.cuda.is_available() or (torch_device.index or 0) >= torch.cuda.device_count()
        ):
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if torch_device.type == "meta":
            raise UserError("--device meta holds no weights; give a real device")
    return torch_dtype, torch_device


def _check_size(options: GenerateOptions) -> None:
    """A height or width the family's pipeline and models cannot take, from the folder's configs or the tiny pair's
    (no loading)."""
    folder = options.folder()
    try:
        defaults = call_defaults.read(folder) if folder is not None else {}
    except ValueError as err:
        raise UserError(str(err)) from None
    height = options.height if options.height is not None else defaults.get("height")
    width = options.width if options.width is not None else defaults.get("width")
    if height is None and width is None:
        return
    family = options.family or ("wan" if options.source != "pretrained" else None)
    if family is None and folder is not None:
        from ..adapters import registered_families

        pipeline_class = class_name(folder / "model_index.json")
        family = next((a.key for a in registered_families() if pipeline_class in a.pipeline_class_names), None)
    if family is None:
        return
    from ..lab.family_tools import tools_for

    tools = tools_for(family)
    multiple = (
        tools.tiny_size_multiple
        if folder is None
        else tools.size_multiple(
            read_json(folder / "vae" / "config.json"), read_json(folder / "transformer" / "config.json")
        )
    )
    for flag, value in (("--height", height), ("--width", width)):
        if multiple and value is not None and value % multiple:
            raise UserError(
                f"{flag} {value}: this {family} pipeline takes multiples of {multiple} "
                f"(e.g. {max(multiple, value // multiple * multiple)})"
            )
