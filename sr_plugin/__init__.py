"""sr-plugin: sketch-rendering cooperation (SRDiffusion) for diffusers' Wan2.1 and CogVideoX pipelines.

handle = sr_plugin.apply(pipe, small_transformer, delta=0.01)
video = pipe(prompt=..., num_inference_steps=50).frames
handle = sr_plugin.apply(pipe, small_transformer, schedule="small:20%,large")   # any cooperation order
handle.trace, handle.segments        # what happened in the last call
handle.remove()                      # the pipeline is exactly as before

sr_plugin.accelerate(pipe, TeaCacheConfig(0.2), PABConfig(), CompileConfig())  # on both transformers
sr_plugin.accelerate(pipe, teacache=0.2, pab=True, compile=True)   # the same, as keywords
cal = sr_plugin.fit_teacache(pipe, prompts)                   # fit TeaCache to your own models
report = sr_plugin.calibrate(pipe, small, prompts, scorer=judge)   # the fastest order within a quality floor
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public names and the module each lives in: imported on first use, so that `sr-plugin --help` and other
#: light uses do not pay for torch and diffusers.
_EXPORTS = {
    "AccelHandle": ".accel",
    "CompileConfig": ".accel",
    "PABConfig": ".accel",
    "TeaCacheFit": ".accel",
    "TeaCacheConfig": ".accel",
    "accelerate": ".accel",
    "fit_teacache": ".accel",
    "SRHandle": ".switch.api",
    "apply": ".switch.api",
    "handle_of": ".switch.api",
    "Schedule": ".switch.schedule",
    "Segment": ".switch.schedule",
    "calibrate": ".calibration",
    "Candidate": ".calibration",
    "Floor": ".calibration",
    "CalibrationReport": ".calibration",
    "DEFAULT_DELTA": ".switch.policy",
    "StepRecord": ".pipeline.trace",
    "SwitchRecord": ".pipeline.trace",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sr_plugin' has no attribute {name!r}")
