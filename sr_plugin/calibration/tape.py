"""Exact prefix reuse: what the transformers gave the pipeline at each step of a run, recorded and replayed.

A calibration run is fully determined by its (prompt, seed) pair, the model that runs each step and the
accelerations. Two runs that agree on those up to step ``m`` compute steps ``0 .. m-1`` bit for bit alike, so the
first run's *tape* (the guided model output the scheduler received at each step: one tensor per step) can stand in
for the second run's transformer calls there. Both CFG branches return the recorded output, and the pipeline's
guidance ``u + g (c - u)`` gives back exactly ``u`` when ``c = u``; the scheduler re-steps through the prefix (its
state rebuilt exactly), the switch sees the same outputs (its adaptive rule decides alike), and only the steps
after the prefix run a model.

A cache acceleration keeps state that replayed steps do not build, so with one a tape is replayed only up to the
start of the segment the new run is in at that point: there the entering model's cache starts fresh anyway (the
switch resets the cache of a model that leaves, and a model entering for the first time is fresh).

`TapeStore` keeps the tapes (host memory, or a folder) within a byte budget; `Replay` records one run and replays a
tape's prefix into it (a listener of the pipeline's call tracker, with a hook on every model in play registered
for the call, above the switch's hand-off hook).
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .. import compat
from ..instance.events import CallListener
from ..instance.patching import drop_hook_residue_at
from ..pipeline.calls import CallTracker

#: The default budget of a `TapeStore` in host memory.
DEFAULT_TAPE_BYTES = 4 * 2**30


def accel_key(accel: Any) -> str:
    """The accelerations of a run as a key: two runs replay each other's steps only with equal keys."""
    return repr(sorted((str(k), repr(v)) for k, v in dict(accel or {}).items()))


def stateful(accel: Any) -> bool:
    """Whether the accelerations keep state across steps (every one but regional compile)."""
    return any(k != "compile" and v not in (None, False) for k, v in dict(accel or {}).items())


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def segment_start(roles: Sequence[str], step: int) -> int:
    """The first step of the segment of ``roles`` that ``step`` is in (``len(roles)`` at the end)."""
    if step >= len(roles):
        return len(roles)
    while step > 0 and roles[step - 1] == roles[step]:
        step -= 1
    return step


@dataclass
class Tape:
    """One run's steps: the guided output the scheduler received, the step's record (model, cache decisions) and
    its seconds. ``outputs`` is None while the tape's tensors are in the store's folder."""

    pair: tuple[str, int]
    accel: str
    roles: list[str]
    records: list[Any]
    seconds: list[float]
    outputs: list[torch.Tensor] | None
    reference: bool = False
    path: pathlib.Path | None = None
    nbytes: int = 0

    def tensors(self) -> list[torch.Tensor]:
        if self.outputs is not None:
            return self.outputs
        assert self.path is not None
        return list(torch.load(self.path, weights_only=True))


@dataclass
class TapeStore:
    """The tapes of a calibration, found by (pair, accelerations) and longest shared prefix of roles, within
    ``budget`` bytes of tensors (in host memory, or in ``folder`` as one file per tape). Over budget, the least
    recently used tapes go first, the references (large only, small only) last."""

    budget: int = DEFAULT_TAPE_BYTES
    folder: pathlib.Path | None = None
    tapes: list[Tape] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.folder is not None:
            self.folder = pathlib.Path(self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tapes)

    def add(self, tape: Tape) -> None:
        tape.nbytes = sum(t.numel() * t.element_size() for t in tape.outputs or [])
        if tape.nbytes > self.budget:
            return
        if self.folder is not None:
            tape.path = self.folder / f"tape-{uuid.uuid4().hex}.pt"
            torch.save(torch.stack(tape.outputs or []), tape.path)
            tape.outputs = None
        self.tapes.append(tape)
        while self.nbytes > self.budget:
            victim = min(self.tapes, key=lambda t: (t.reference, self.tapes.index(t)))
            self._drop(victim)

    def _drop(self, tape: Tape) -> None:
        self.tapes.remove(tape)
        if tape.path is not None:
            tape.path.unlink(missing_ok=True)

    def best(
        self, pair: tuple[str, int], accel: Any, roles: Sequence[str] | None, num_steps: int
    ) -> tuple[Tape | None, int]:
        """The tape that lets a run of ``pair`` with ``accel`` skip the most steps, and how many: ``roles`` are the
        run's roles where known before it runs (a schedule with fixed ends), else None (an adaptive end: the
        replay then follows the run and stops where its roles part from the tape's; with a cache acceleration
        nothing is replayed)."""
        key = accel_key(accel)
        best: Tape | None = None
        best_length = best_score = 0
        for tape in self.tapes:
            if tape.pair != pair or tape.accel != key or len(tape.roles) != num_steps:
                continue
            if roles is None:  # followed step by step; large first is the likeliest prefix
                length = 0 if stateful(accel) else num_steps
                score = common_prefix(tape.roles, ["large"] * num_steps)
            else:
                length = common_prefix(tape.roles, roles)
                if stateful(accel) and length < num_steps:
                    length = segment_start(roles, length)
                score = length
            if length > 0 and score > best_score:
                best, best_length, best_score = tape, length, score
        if best is not None:  # recently used: kept longest
            self.tapes.remove(best)
            self.tapes.append(best)
        return best, best_length

    def clear(self) -> None:
        for tape in list(self.tapes):
            self._drop(tape)


class _ReplayHook(ModelHook):
    """Outermost on a model for one call: on a replayed step it returns the tape's output instead of computing."""

    def __init__(self, replay: Replay) -> None:
        super().__init__()
        self.replay = replay

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        output = self.replay.output_for(kwargs.get("hidden_states", args[0] if args else None))
        if output is None:
            forward = self.fn_ref.original_forward
            assert forward is not None  # set when diffusers registered the hook
            return forward(*args, **kwargs)
        if kwargs.get("return_dict", True):
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=output)
        return (output,)


class Replay(CallListener):
    """Records one run of the pipeline (its tape) and, given a tape and a length, replays its first steps.

    Installed for one run (`install` / `remove`). ``length`` steps at most are replayed, and only while the run's
    model at each step is the tape's (the run and the tape part where their roles do)."""

    HOOK = "sr_plugin_calibration_replay"

    def __init__(self, pipe: Any, source: Tape | None = None, length: int = 0) -> None:
        self.pipe = pipe
        self.source = source
        self.length = length if source is not None else 0
        self._source_outputs = source.tensors() if source is not None and self.length else []
        self.outputs: list[torch.Tensor] = []
        #: How many steps of the last run were replayed (its first ones).
        self.replayed = 0
        self._served: set[int] = set()
        self._hooked: list[tuple[torch.nn.Module, bool, bool]] = []
        self._calls: CallTracker | None = None
        self._tracker: CallTracker | None = None

    def install(self) -> Replay:
        self._tracker = CallTracker.of(self.pipe)
        self._tracker.add(self)
        return self

    def remove(self) -> None:
        if self._tracker is not None:
            self._tracker.discard(self)
            self._tracker = None

    # ------------------------------------------------------------------ the call
    def begin(self, calls: CallTracker) -> None:
        self._calls = calls
        self.outputs, self.replayed, self._served = [], 0, set()

    def prepare(self, calls: CallTracker) -> None:
        if not self.length:
            return
        for model in calls.in_play:  # after every listener began: above the switch's hand-off hook
            had = ("forward" in vars(model), compat.HOOK_REGISTRY_ATTR in vars(model))
            HookRegistry.check_if_exists_or_initialize(model).register_hook(_ReplayHook(self), self.HOOK)
            self._hooked.append((model, *had))

    def output_for(self, hidden_states: Any) -> torch.Tensor | None:
        calls = self._calls
        if calls is None or not self.length:
            return None
        step = calls.step
        assert self.source is not None
        if step >= self.length or calls.running != self.source.roles[step]:
            self.length = min(self.length, step)  # parted from the tape: every later step computes
            return None
        output = self._source_outputs[step]
        self._served.add(step)
        if isinstance(hidden_states, torch.Tensor):
            output = output.to(hidden_states.device)
            if hidden_states.shape[0] != output.shape[0]:  # CFG as one batched call (CogVideoX): both halves
                output = output.repeat(hidden_states.shape[0] // output.shape[0], *([1] * (output.dim() - 1)))
        return output

    def after_step(self, calls: CallTracker, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        step = calls.step
        if step in self._served:
            self.replayed = step + 1
            self.outputs.append(self._source_outputs[step])  # the same tensor: no copy for a shared prefix
        else:
            self.outputs.append(model_output.detach().to("cpu", copy=True))

    def end(self, calls: CallTracker) -> None:
        for model, had_forward, had_registry in self._hooked:
            HookRegistry.check_if_exists_or_initialize(model).remove_hook(self.HOOK, recurse=False)
            drop_hook_residue_at(model, forward=not had_forward, registry=not had_registry)
        self._hooked = []
        self._calls = None
