"""How a small partner compares with its large model, measured the way the method's sources do (docs/method.md,
"Cooperation schedules"):

- `divergence_profile`: along large-only trajectories, at every step, how far the small model's guided velocity is
  from the large one's on the very same input: ``mean |g_large - g_small| / mean |g_large|`` (FlowBlending's
  curve, U-shaped for Wan 1.3B / 14B: large early and late, small in the middle). The small model sees the input
  through the family's hand-off (CogVideoX: mapped into its latent space and schedule, its prediction mapped back),
  and its two CFG branches are combined as the pipeline combines the large model's.
- `perturbation`: SRDiffusion's asymmetry: hand one window of steps (early, middle, late) to the small model and
  measure what changes against large only, the composition (the judge's measures, e.g. a prompt's attributes) and
  the pixels (PSNR, SSIM).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook

from .. import compat
from ..adapters import adapter_for
from ..instance.events import CallListener
from ..instance.patching import drop_hook_residue_at
from ..pipeline.calls import CallTracker
from ..pipeline.seeded import run_seeded
from .candidates import Candidate
from .runner import Runner
from .search import checked_pairs


class _Shadow(ModelHook):
    """On the large model for one call: each call also runs the small model on the same input (through the
    hand-off), and both raw outputs are kept for the step."""

    def __init__(self, probe: _DivergenceProbe) -> None:
        super().__init__()
        self.probe = probe

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward = self.fn_ref.original_forward
        assert forward is not None  # set when diffusers registered the hook
        output = forward(*args, **kwargs)
        probe = self.probe
        if args:
            kwargs = probe.bind(args, kwargs)
        with torch.no_grad():
            mapped, state = probe.handoff.map_inputs(dict(kwargs))
            small_out = probe.small(**{**mapped, "return_dict": False})[0]
            small_out = probe.handoff.map_output(small_out, state)
        large_out = output[0] if isinstance(output, tuple) else output.sample
        probe.large_raw.append(large_out.detach())
        probe.small_raw.append(small_out.detach().to(large_out.dtype))
        return output


class _DivergenceProbe(CallListener):
    def __init__(self, pipe: Any, small: torch.nn.Module, handoff: Any, guidance_scale: float) -> None:
        from ..instance.arguments import binder

        self.pipe, self.small, self.handoff, self.guidance_scale = pipe, small, handoff, guidance_scale
        self.adapter = adapter_for(pipe)
        self.bind = binder(type(pipe.transformer))
        self.large_raw: list[torch.Tensor] = []
        self.small_raw: list[torch.Tensor] = []
        #: Per step: mean |g_large - g_small| / mean |g_large|.
        self.divergence: list[float] = []
        self._hooked: tuple[torch.nn.Module, bool, bool] | None = None

    def begin(self, calls: CallTracker) -> None:
        self.handoff.begin_call(self.pipe)
        self.large_raw, self.small_raw, self.divergence = [], [], []
        model = self.pipe.transformer
        had = ("forward" in vars(model), compat.HOOK_REGISTRY_ATTR in vars(model))
        HookRegistry.check_if_exists_or_initialize(model).register_hook(_Shadow(self), "sr_plugin_divergence")
        self._hooked = (model, *had)

    def after_step(self, calls: CallTracker, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        large = self.adapter.guided(self.large_raw, self.guidance_scale)
        if not torch.allclose(large.float(), model_output.float(), rtol=1e-4, atol=1e-5):
            raise RuntimeError(
                "the divergence probe's guidance does not reproduce the pipeline's: this call guides "
                "differently (dynamic CFG?) from guidance_scale alone"
            )
        small = self.adapter.guided(self.small_raw, self.guidance_scale)
        g = model_output.float()
        self.divergence.append(float((g - small.float()).abs().mean() / g.abs().mean().clamp_min(1e-12)))
        self.large_raw, self.small_raw = [], []

    def end(self, calls: CallTracker) -> None:
        if self._hooked is not None:
            model, had_forward, had_registry = self._hooked
            HookRegistry.check_if_exists_or_initialize(model).remove_hook("sr_plugin_divergence", recurse=False)
            drop_hook_residue_at(model, forward=not had_forward, registry=not had_registry)
            self._hooked = None


@dataclass
class DivergenceProfile:
    """Per step (rows: pairs), the small model's guided velocity's distance from the large one's, relative to it."""

    pairs: list[tuple[str, int]]
    per_pair: list[list[float]]

    @property
    def mean(self) -> list[float]:
        return [statistics.mean(col) for col in zip(*self.per_pair)]

    def as_dict(self) -> dict[str, Any]:
        return {"pairs": [list(p) for p in self.pairs], "mean": self.mean, "per_pair": self.per_pair}


def divergence_profile(
    pipe: Any,
    small: torch.nn.Module,
    prompts: Sequence[Any],
    *,
    num_inference_steps: int = 50,
    seed: int = 0,
    guidance_scale: float,
    apply_kwargs: Mapping[str, Any] | None = None,
    say: Callable[[str], Any] | None = None,
    **call: Any,
) -> DivergenceProfile:
    """The divergence of ``small`` from ``pipe``'s transformer along large-only trajectories of ``prompts`` (or
    ``(prompt, seed)`` pairs): the large model runs every step, the small one shadows it on the same inputs."""
    pairs = checked_pairs(prompts, seed)
    adapter = adapter_for(pipe)
    options = {k: v for k, v in dict(apply_kwargs or {}).items() if k in adapter.option_names}
    adapter.check_pair(pipe.transformer, small)
    probe = _DivergenceProbe(pipe, small, adapter.make_handoff(pipe, small, **options), guidance_scale)
    tracker = CallTracker.of(pipe)
    tracker.add(probe)
    rows = []
    try:
        for i, (prompt, s) in enumerate(pairs):
            with compat.quiet_progress_bar(pipe):
                run_seeded(
                    pipe, prompt, s, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **call
                )
            rows.append(list(probe.divergence))
            if say is not None:
                say(
                    f"[{i + 1}/{len(pairs)}] {prompt}: divergence at steps 0 / mid / last "
                    f"{rows[-1][0]:.3f} / {rows[-1][len(rows[-1]) // 2]:.3f} / {rows[-1][-1]:.3f}"
                )
    finally:
        tracker.discard(probe)
    return DivergenceProfile(pairs, rows)


def windows(num_steps: int, width: int) -> dict[str, str]:
    """Schedules that hand one window of ``width`` steps to the small model: at the start, in the middle, at the
    end of a call of ``num_steps``."""
    mid = (num_steps - width) // 2
    return {
        "early": f"small:{width},large",
        "middle": f"large:{mid},small:{mid + width},large",
        "late": f"large:{num_steps - width},small",
    }


@dataclass
class WindowResult:
    """One window handed to the small model, against large only on the same pairs."""

    window: str
    schedule: str | None
    measures: dict[str, float]
    psnr: float | None
    ssim: float | None
    per_pair: list[dict[str, float]] = field(default_factory=list, repr=False)


def perturbation(
    pipe: Any,
    small: torch.nn.Module,
    prompts: Sequence[Any],
    schedules: Mapping[str, str],
    *,
    measures: Mapping[str, Callable[[np.ndarray, str], float]],
    num_inference_steps: int = 50,
    seed: int = 0,
    apply_kwargs: Mapping[str, Any] | None = None,
    say: Callable[[str], Any] | None = None,
    **call: Any,
) -> list[WindowResult]:
    """Each schedule of ``schedules`` (by name, e.g. `windows`) against large only: the mean of each measure
    (``measure(video, prompt)``) and the PSNR / SSIM of the frames against large only's."""
    pairs = checked_pairs(prompts, seed)
    runner = Runner(pipe, small, steps=num_inference_steps, call=call, apply_kwargs=apply_kwargs)
    results = []
    for name, schedule in {"large only": None, **schedules}.items():
        candidate = Candidate(schedule)
        runner.check(candidate)
        scores: list[dict[str, float]] = []
        fid: list[tuple[float, float]] = []
        for pair in pairs:
            run = runner.reference(pair) if schedule is None else runner.run(candidate, pair)
            assert run.video is not None
            scores.append({k: float(f(run.video, pair[0])) for k, f in measures.items()})
            if schedule is not None:
                assert run.psnr is not None and run.ssim is not None
                fid.append((run.psnr, run.ssim))
        means = {k: statistics.mean(s[k] for s in scores) for k in measures}
        row = WindowResult(
            name,
            schedule,
            means,
            statistics.mean(p for p, _ in fid) if fid else None,
            statistics.mean(s for _, s in fid) if fid else None,
            scores,
        )
        results.append(row)
        if say is not None:
            say(
                f"{name} ({schedule or 'large only'}): "
                + ", ".join(f"{k} {v:.3f}" for k, v in means.items())
                + ("" if row.psnr is None else f", PSNR {row.psnr:.2f} dB, SSIM {row.ssim:.3f}")
            )
    return results
