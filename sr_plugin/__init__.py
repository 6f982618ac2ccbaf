"""sr-plugin: sketch-rendering cooperation (SRDiffusion) for diffusers' Wan2.1 and CogVideoX pipelines.

    handle = sr_plugin.apply(pipe, small_transformer, delta=0.01)
    video = pipe(prompt=..., num_inference_steps=50).frames
    handle.trace, handle.switch_step     # what happened in the last call
    handle.remove()                      # the pipeline is exactly as before

    sr_plugin.accelerate(pipe, teacache=0.2, pab=True, compile=True)   # on both transformers, either order
    cal = sr_plugin.calibrate_teacache(pipe, prompts)                   # fit TeaCache to your own models
"""

from ._layout import use_checkout_adapters

use_checkout_adapters()

from .accel import (AccelHandle, PABConfig, TeaCacheCalibration, TeaCacheConfig, accelerate,  # noqa: E402
                    calibrate_teacache)
from .api import SRHandle, apply, handle_of  # noqa: E402
from .policy import DEFAULT_DELTA  # noqa: E402
from .trace import StepRecord, SwitchRecord  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_DELTA", "AccelHandle", "PABConfig", "SRHandle", "StepRecord", "SwitchRecord", "TeaCacheCalibration",
    "TeaCacheConfig", "accelerate", "apply", "calibrate_teacache", "handle_of", "__version__",
]
