"""Shared test helpers: a deterministic runner of the tiny pipelines (sr_plugin.lab.tiny), call logging.

A module of its own, not conftest.py: benchmarks/ has a conftest.py too, and `pytest tests benchmarks` must
collect both (two modules named `conftest` cannot both be imported by name)."""

from __future__ import annotations

import functools
from typing import Any

import torch

from sr_plugin.instance.patching import InstancePatches
from sr_plugin.pipeline.seeded import run_seeded
from sr_plugin.lab.tiny import TINY_CALL

PROMPT = "a red car drives through a snowy city at night"
STEPS = 10
#: TeaCache with the identity polynomial (the rescaled distance is the relative L1 change itself) and
#: thresholds that give a mix of computed and skipped calls on the tiny models, whose time embeddings
#: change by 0.3 to 1.3 from step to step.
LINEAR = "identity"
MIX = {"wan": 1.5, "cogvideox": 1.2}


def run(pipe: Any, family: str, steps: int = STEPS, seed: int = 0, output_type: str = "latent", **kwargs: Any):
    """One call of the real pipeline with a fixed seed; returns the frames (latents by default)."""
    args = dict(TINY_CALL[family], num_inference_steps=steps)
    args.update(kwargs)
    return run_seeded(pipe, args.pop("prompt", PROMPT), seed, output_type=output_type, **args)


class CallLog:
    """Records which transformer ran each call and the arguments it really received.

    It wraps each instance's ``forward`` (so it sits inside any hook registered later, such as the hand-off
    hook, and sees the mapped inputs); `close` restores the instances.
    """

    def __init__(self, **models: torch.nn.Module) -> None:
        self.calls: list[str] = []
        self.kwargs: list[dict[str, Any]] = []
        self._patches = InstancePatches()
        for name, model in models.items():
            self._patches.set(model, "forward", self._wrap(name, model.forward))

    def _wrap(self, name: str, forward):
        @functools.wraps(forward)
        def logged(*args, **kwargs):
            self.calls.append(name)
            self.kwargs.append(kwargs)
            return forward(*args, **kwargs)

        return logged

    def close(self) -> None:
        self._patches.undo()
