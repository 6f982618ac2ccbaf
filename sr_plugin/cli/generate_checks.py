"""The checks of `sr-plugin generate` that need no model: light (no torch, no diffusers), so that the command
line runs them at parse time, before anything heavy is imported or loaded."""

from __future__ import annotations

import pathlib

from ..lab import task
from .outputs import UserError, check_output


def check_arguments(prompt: str, out: str, large: str | None = None, tiny: bool = False,
                    family: str | None = None, known_families: tuple[str, ...] | None = None,
                    teacache: float | None = None, fbcache: float | None = None,
                    min_switch_step: int | None = None, max_switch_step: int | None = None,
                    schedule: str | None = None) -> pathlib.Path:
    """Every check that needs no model, before anything heavy is imported or loaded (the CLI runs it at parse
    time): the output files, the prompt's words for the trained families, the family's name, the switch bounds
    and the accelerations that exclude each other."""
    out_path = pathlib.Path(out)
    try:
        check_output(out_path, (".mp4",), companions=(out_path.with_suffix(".trace.json"),
                                                      out_path.with_suffix(".switch.png")))
    except ValueError as err:
        raise UserError(f"--out: {err}") from None
    if family is not None and known_families is not None and family not in known_families:
        raise UserError(f"unknown family {family!r}; known: {', '.join(known_families)}")
    if large is None and not tiny:
        try:
            task.parse(prompt)
        except ValueError as err:
            raise UserError(f"{err}. (The trained families know only their task; --tiny takes any prompt.)") from err
    if min_switch_step is not None and max_switch_step is not None and min_switch_step > max_switch_step:
        raise UserError(f"--min-switch-step {min_switch_step} is above --max-switch-step {max_switch_step}")
    if schedule is not None:
        from ..switch.schedule import Schedule

        try:
            parsed = Schedule.parse(schedule)
            parsed.with_bounds(min_switch_step, max_switch_step)
        except (ValueError, TypeError) as err:
            raise UserError(f"--schedule: {err}") from None
    if teacache is not None and fbcache is not None:
        raise UserError("--teacache and --fbcache both cache the transformer blocks: choose one")
    return out_path
