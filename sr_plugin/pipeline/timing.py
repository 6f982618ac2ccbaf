"""Timing a pipeline's denoising loop apart from text encoding and decoding: what the calibrations and the
quality runs measure."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..compat import quiet_progress_bar
from ..instance.events import CallListener
from .calls import CallTracker
from .seeded import run_seeded


@contextlib.contextmanager
def loop_timer(pipe: Any) -> Iterator[list[float]]:
    """Records the wall time of each denoising loop: the pipelines open ``progress_bar`` right before their
    first step and close it after their last. Patches the instance for the duration of the block only."""
    times: list[float] = []
    had_own = "progress_bar" in pipe.__dict__
    original = pipe.progress_bar

    class Timed:
        def __init__(self, bar: Any) -> None:
            self.bar = bar

        def __enter__(self) -> Any:
            self.start = time.perf_counter()
            return self.bar.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            result = self.bar.__exit__(*exc)
            times.append(time.perf_counter() - self.start)
            return result

    pipe.progress_bar = lambda *args, **kwargs: Timed(original(*args, **kwargs))
    try:
        yield times
    finally:
        if had_own:
            pipe.progress_bar = original
        else:
            del pipe.progress_bar


def timed_run(pipe: Any, prompt: str, seed: int, steps: int, **call: Any) -> tuple[np.ndarray, float, float]:
    """One video ([F, H, W, 3] in [0, 1]), its denoising seconds and its total seconds; no progress bar (the
    project's own loops run many videos), the pipeline's own setting kept for its other calls."""
    with loop_timer(pipe) as loops, quiet_progress_bar(pipe):
        start = time.perf_counter()
        frames = run_seeded(pipe, prompt, seed, output_type="np", num_inference_steps=steps, **call)[0]
        total = time.perf_counter() - start
    return np.asarray(frames, dtype=np.float32), loops[-1], total


class StepClock(CallListener):
    """The wall time of every denoising step of a pipeline's calls, beside the step's record (which model ran it,
    its cache and attention decisions): what a step-cost model is fitted on. A listener of the pipeline's call
    tracker while installed (`install` / `remove`); on CUDA it synchronizes at each step end, so install it for
    timing runs only.

    ``calls``: per finished call, a list of ``(StepRecord, seconds)``."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[Any, float]]] = []
        self._times: list[float] = []
        self._tracker: Any = None

    def install(self, pipe: Any) -> StepClock:
        self._tracker = CallTracker.of(pipe)
        self._tracker.add(self)
        return self

    def remove(self) -> None:
        if self._tracker is not None:
            self._tracker.discard(self)
            self._tracker = None

    def begin(self, calls: Any) -> None:
        self._device = _cuda_device(calls.pipe)
        self._times = [self._now()]

    def step_ended(self, calls: Any) -> None:
        self._times.append(self._now())

    def end(self, calls: Any) -> None:
        records = calls.records()
        seconds = [b - a for a, b in zip(self._times, self._times[1:])]
        if len(seconds) == len(records):  # a finished call (an interrupted one is not a timing)
            self.calls.append(list(zip(records, seconds)))

    def _now(self) -> float:
        if self._device is not None:
            import torch

            torch.cuda.synchronize(self._device)
        return time.perf_counter()


def _cuda_device(pipe: Any) -> Any:
    device = getattr(pipe, "_execution_device", None)
    return device if getattr(device, "type", None) == "cuda" else None
