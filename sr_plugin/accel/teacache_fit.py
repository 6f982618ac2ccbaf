"""Fit TeaCache's rescale polynomial to your own models, the way its authors fitted the published ones.

Over a set of prompts and every step, record the relative L1 change (between consecutive steps of the same
model and CFG branch) of the input TeaCache measures, x, and of the model's output, y; fit
``numpy.polyfit(x, y, degree)`` per model. With the switch applied, the small model is calibrated on the
steps it actually runs. The result plugs into ``accelerate(teacache=calibration.config(threshold))``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook

from .. import compat
from ..adapters import adapter_for
from ..instance.arguments import binder
from ..instance.patching import drop_hook_residue
from ..pipeline.calls import models_in_play
from ..pipeline.seeded import run_seeded
from .teacache import MAX_DEGREE, RET_WARMUP_STEPS, WARMUP_STEPS, TeaCacheConfig, check_coefficients

#: TeaCache's published polynomials are of degree 4.
DEFAULT_DEGREE = 4


@dataclass
class TeaCacheFit:
    """Fitted coefficients per model ("large", "small"), numpy.poly1d order, with the fit's R squared.

    ``samples`` keeps, per model, the (x, y) pairs the fit used; ``sequences`` the x of every call in order,
    per (prompt index, model, branch), which TeaCache's own decisions can be replayed from."""

    coefficients: dict[str, tuple[float, ...]]
    r_squared: dict[str, float]
    degree: int
    ret_steps: bool = False
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    sequences: dict[str, list[float | None]] = field(default_factory=dict)

    def config(self, threshold: float | dict[str, float]) -> TeaCacheConfig:
        """A TeaCacheConfig using these coefficients for each calibrated model."""
        return TeaCacheConfig(threshold, dict(self.coefficients), ret_steps=self.ret_steps)

    def save(self, path: str | os.PathLike[str]) -> None:
        data = {
            "coefficients": self.coefficients,
            "r_squared": self.r_squared,
            "degree": self.degree,
            "ret_steps": self.ret_steps,
        }
        with open(path, "w") as f:
            json.dump(data, f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TeaCacheFit:
        with open(path) as f:
            data = json.load(f)
        degree = data["degree"]
        coefficients = {role: check_coefficients(c, degree) for role, c in data["coefficients"].items()}
        return cls(
            coefficients,
            {k: float(v) for k, v in data["r_squared"].items()},
            degree,
            bool(data.get("ret_steps", False)),
        )


def fit_rescale(
    x: Sequence[float], y: Sequence[float], degree: int = DEFAULT_DEGREE
) -> tuple[tuple[float, ...], float]:
    """``numpy.polyfit(x, y, degree)`` and its R squared; a clear error when the points cannot fix it."""
    check_degree(degree)
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be two sequences of the same length, got {xs.shape} and {ys.shape}")
    if len(xs) <= degree or len(np.unique(xs)) <= degree:
        raise ValueError(
            f"a degree-{degree} fit needs more than {degree} distinct x values, got "
            f"{len(np.unique(xs))} (from {len(xs)} points): use more prompts or steps, or a lower degree"
        )
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ValueError("x and y must be finite")
    coefficients = np.polyfit(xs, ys, degree)
    residual = ys - np.polyval(coefficients, xs)
    total = ((ys - ys.mean()) ** 2).sum()
    r2 = 1.0 - float((residual**2).sum() / total) if total > 0 else 1.0
    return tuple(float(c) for c in coefficients), r2


def check_degree(degree: int) -> None:
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be an int from 1 to {MAX_DEGREE}, got {degree!r}")


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean() / b.float().abs().mean().clamp_min(1e-12))


class _Recorder:
    """Records, per call of one model, the modulated input and the output, as relative changes per branch."""

    def __init__(self, role: str, warmup: int) -> None:
        self.role = role
        self.warmup = warmup
        self.modulated: torch.Tensor | None = None
        self.previous: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.samples: list[tuple[float, float]] = []
        self.sequences: dict[str, list[float | None]] = {}
        self.prompt = 0
        self._timestep: float | None = None
        self._step = -1
        self._branch = 0

    def new_call(self, prompt: int) -> None:
        self.prompt, self.previous, self._timestep, self._step = prompt, {}, None, -1

    def before(self, timestep: Any) -> None:
        t = float(torch.as_tensor(timestep).flatten()[0])
        if t != self._timestep:  # a new step: its calls are the CFG branches, in order
            self._timestep, self._step, self._branch = t, self._step + 1, 0
        else:
            self._branch += 1

    def after(self, output: torch.Tensor) -> None:
        key = f"{self.prompt}/{self.role}/{self._branch}"
        sequence = self.sequences.setdefault(key, [])
        previous = self.previous.get(self._branch)
        assert self.modulated is not None, "the modulated input is recorded before the model's output"
        current = (self.modulated.detach().clone(), output.detach().clone())
        x = None
        if previous is not None:
            x = _relative_change(current[0], previous[0])
            if self._step >= self.warmup:
                self.samples.append((x, _relative_change(current[1], previous[1])))
        sequence.append(x)
        self.previous[self._branch] = current


class _ModelHook(ModelHook):
    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self.recorder.before(kwargs["timestep"] if "timestep" in kwargs else args[1])
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        sample = output[0] if isinstance(output, tuple) else output.sample
        self.recorder.after(sample)
        return output


class _InputHook(ModelHook):
    def __init__(self, recorder: _Recorder, source: tuple[Any, ...], module: torch.nn.Module) -> None:
        super().__init__()
        self.recorder, self.source = recorder, source
        self.bind = binder(type(module)) if source[0] == "block_arg" else None

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        if self.bind is not None:
            self.recorder.modulated = self.bind(args, kwargs)[self.source[1]]
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        if self.source[0] == "output_of":
            self.recorder.modulated = output[self.source[2]]
        return output


def fit_teacache(
    pipe: Any,
    prompts: Sequence[str],
    *,
    num_inference_steps: int = 50,
    degree: int = DEFAULT_DEGREE,
    ret_steps: bool = False,
    seed: int = 0,
    **call_kwargs: Any,
) -> TeaCacheFit:
    """Run ``pipe`` on every prompt (seeds ``seed``, ``seed + 1``, ...) and fit TeaCache's rescale polynomial
    for each model that ran: the pipeline's transformer ("large") and, with the switch, the small one.

    Refused, before any generation, when a caching acceleration is on (it would change what is measured),
    the prompt set is empty, or the degree is not an int from 1 to 8.
    """
    from . import accelerations_of

    check_degree(degree)
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    adapter = adapter_for(pipe)
    accel = accelerations_of(pipe)
    if accel is not None and accel.caches:
        raise ValueError(
            "calibrate TeaCache on a pipeline without caching accelerations: remove the "
            "sr_plugin.accelerate handle first (cached steps would be measured as unchanged)"
        )
    models = models_in_play(pipe)  # with the switch applied, its small model too
    for role, model in models.items():
        if compat.cache_config(model) is not None:
            raise ValueError(f"the {role} transformer has a diffusers cache enabled: disable it to calibrate")
        adapter.teacache_input(model, ret_steps)  # raises for a mode the family has no input for
    warmup = RET_WARMUP_STEPS if ret_steps else WARMUP_STEPS
    recorders = {role: _Recorder(role, warmup) for role in models}
    name = f"sr_plugin_teacache_calibration_{uuid.uuid4().hex[:8]}"
    registered: list[torch.nn.Module] = []
    try:
        for role, model in models.items():
            source = adapter.teacache_input(model, ret_steps)
            target = adapter.blocks(model)[0] if source[0] == "block_arg" else source[1]
            input_hook = _InputHook(recorders[role], source, target)
            HookRegistry.check_if_exists_or_initialize(target).register_hook(input_hook, name)
            HookRegistry.check_if_exists_or_initialize(model).register_hook(_ModelHook(recorders[role]), name)
            registered += [target, model]
        for i, prompt in enumerate(prompts):
            for recorder in recorders.values():
                recorder.new_call(i)
            with torch.no_grad():
                run_seeded(pipe, prompt, seed + i, num_inference_steps=num_inference_steps, **call_kwargs)
    finally:
        for module in registered:
            registry = HookRegistry.check_if_exists_or_initialize(module)
            if name in registry.hooks:
                registry.remove_hook(name, recurse=False)
        for model in models.values():
            drop_hook_residue(model)
    coefficients, r2, samples, sequences = {}, {}, {}, {}
    for role, recorder in recorders.items():
        if not recorder.samples:
            continue  # e.g. a small model that never ran
        xs, ys = zip(*recorder.samples)
        coefficients[role], r2[role] = fit_rescale(xs, ys, degree)
        samples[role] = recorder.samples
        sequences.update(recorder.sequences)
    return TeaCacheFit(coefficients, r2, degree, ret_steps, samples, sequences)
