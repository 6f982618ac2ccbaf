"""Shared test helpers: a deterministic runner of the tiny pipelines (sr_plugin.lab.tiny), call logging.

A module of its own, not conftest.py: benchmarks/ has a conftest.py too, and `pytest tests benchmarks` must
collect both (two modules named `conftest` cannot both be imported by name)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from diffusers import CogVideoXTransformer3DModel

from sr_plugin.instance.patching import InstancePatches
from sr_plugin.lab.tiny import TINY_CALL
from sr_plugin.pipeline.seeded import run_seeded

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


class SeenThrough(CogVideoXTransformer3DModel):
    """The large CogVideoX model as a model trained on another latent scale and noise schedule would behave.

    Built from first principles, independently of the adapter: a sample x' at timestep t' of the "small"
    space (latents scaled by c, schedule abar_s) is the large-space sample x = x' / k at the timestep t with
    the same signal-to-noise ratio once the scale is taken out: SNR_l(t) = c^2 SNR_s(t'). Schedules are read
    at fractional timesteps by linear interpolation of abar between training timesteps (numpy.interp).
    """

    def configure(
        self,
        abar_large: torch.Tensor,
        abar_small: torch.Tensor,
        c: float,
        large_type: str = "v_prediction",
        small_type: str = "v_prediction",
    ) -> SeenThrough:
        self.abar_l = abar_large.double().numpy()
        self.abar_s = abar_small.double().numpy()
        self.c = c
        self.large_type, self.small_type = large_type, small_type
        return self

    def forward(self, hidden_states, encoder_hidden_states, timestep, **kwargs):
        steps = np.arange(len(self.abar_s), dtype=np.float64)
        t_small = timestep.double().numpy()
        a_s = np.interp(t_small, steps, self.abar_s)
        c2 = self.c**2
        a = c2 * a_s / (1 - a_s + c2 * a_s)  # SNR_l = c^2 SNR_s, written in abar
        t = np.interp(-a, -self.abar_l, steps)  # abar_l decreases: interpolate on the increasing -abar
        k = np.sqrt((1 - a_s) / np.maximum(1 - a, 1e-300))
        as_col = lambda v: torch.from_numpy(v).reshape(-1, 1, 1, 1, 1)  # noqa: E731
        x = (hidden_states.double() / as_col(k)).to(hidden_states.dtype)
        out = (
            super()
            .forward(
                hidden_states=x,
                encoder_hidden_states=encoder_hidden_states,
                timestep=torch.from_numpy(t).to(torch.float32),
                **kwargs,
            )[0]
            .double()
        )
        xd = x.double()
        sa, s1a = as_col(np.sqrt(a)), as_col(np.sqrt(1 - a))
        if self.large_type == "v_prediction":  # the large model's prediction, of the large scheduler's type
            x0, eps = sa * xd - s1a * out, s1a * xd + sa * out
        elif self.large_type == "epsilon":
            x0, eps = (xd - s1a * out) / sa, out
        else:
            x0, eps = out, (xd - sa * out) / s1a
        x0_small = self.c * x0  # the same video in the small space; the noise is the same
        small = {
            "v_prediction": as_col(np.sqrt(a_s)) * eps - as_col(np.sqrt(1 - a_s)) * x0_small,
            "epsilon": eps,
            "sample": x0_small,
        }[self.small_type]
        return (small.to(hidden_states.dtype),)


def seen_through(pipe, small_scale: float, small_schedule) -> SeenThrough:
    """The large model as one that predicts in ``small_schedule``'s prediction type, on its schedule and latent
    scale."""
    large = pipe.transformer
    model = SeenThrough.from_config(large.config)
    model.load_state_dict(large.state_dict())
    model.eval()
    c = small_scale / pipe.vae.config.scaling_factor
    return model.configure(
        pipe.scheduler.alphas_cumprod,
        small_schedule.alphas_cumprod,
        c,
        pipe.scheduler.config.prediction_type,
        small_schedule.config.prediction_type,
    )
