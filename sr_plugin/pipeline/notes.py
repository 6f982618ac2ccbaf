"""What the listeners of a call note for the trace, step by step, and the trace itself: one `StepRecord` per step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .trace import StepRecord


class StepNotes:
    """Per step of the current (or last) call: ``{field: {(role, branch): value}}``, a field being a `StepRecord`
    field ("cache", "attention"), noted by the listener that owns it, which also says how its values read in the
    trace (`renderers`). The call tracker moves `step` along (None between calls)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, dict[tuple[str, str], Any]]] = []
        #: How a field's noted value reads in the trace, by field.
        self.renderers: dict[str, Callable[[Any], Any]] = {}
        #: The step now running (None outside a call).
        self.step: int | None = None

    def clear(self) -> None:
        self.steps = []

    def note(
        self, field: str, role: str, branch: str, value: Any, merge: Callable[[Any, Any], Any] | None = None
    ) -> None:
        """Note ``value`` for the step now running (``merge(old, new)`` when one was noted already)."""
        if self.step is None:
            return
        while len(self.steps) <= self.step:
            self.steps.append({})
        noted = self.steps[self.step].setdefault(field, {})
        key = (role, branch)
        noted[key] = merge(noted[key], value) if merge is not None and key in noted else value

    def at(self, step: int, field: str) -> dict[tuple[str, str], Any]:
        """What was noted for ``field`` at one step, per (role, branch), as the trace shows it."""
        noted = self.steps[step].get(field, {}) if step < len(self.steps) else {}
        render = self.renderers.get(field)
        return {key: render(value) for key, value in noted.items()} if render is not None else dict(noted)

    def records(
        self,
        ran: list[str],
        timesteps: list[float],
        d: list[float | None] | None = None,
        s: list[float | None] | None = None,
    ) -> list[StepRecord]:
        """A call as one `StepRecord` per step (the one trace type of both handles): which role ran it (``ran``),
        and that model's cache and attention decisions by branch. ``d``/``s`` are the switch's metric, if any."""
        out = []
        for j, role in enumerate(ran):
            out.append(
                StepRecord(
                    index=j,
                    timestep=timesteps[j],
                    model=role,
                    d=d[j] if d is not None and j < len(d) else None,
                    s=s[j] if s is not None and j < len(s) else None,
                    cache={b: what for (r, b), what in self.at(j, "cache").items() if r == role},
                    attention={b: what for (r, b), what in self.at(j, "attention").items() if r == role},
                )
            )
        return out
