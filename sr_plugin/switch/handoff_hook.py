"""The hook on the small transformer while it stands in for the large one during a pipeline call.

Registered when a call starts (after the caches mirrored onto the small model) and removed when it ends, so it is
over every hook an acceleration or a cache put on the small model: they see the inputs the small model really
gets. Only a hook registered for the call after it (the calibration's replay) sits above it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from diffusers.hooks import ModelHook

from ..adapters import Handoff
from ..instance.arguments import binder

#: Inputs that carry activations: cast to the small model's dtype. Timesteps keep their precision.
ACTIVATION_INPUTS = ("hidden_states", "encoder_hidden_states")


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_move(v, device) for v in value)
    return value


def replace_sample(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to the prediction inside a transformer's output (tuple or output dataclass)."""
    if isinstance(output, tuple):
        return (fn(output[0]),) + tuple(output[1:])
    output.sample = fn(output.sample)
    return output


class HandoffHook(ModelHook):
    def __init__(
        self,
        handoff: Handoff,
        device: torch.device | None = None,
        contexts: list[Callable[[], AbstractContextManager]] | None = None,
    ) -> None:
        super().__init__()
        self.handoff = handoff
        self.device = device
        #: Factories of context managers entered around every call of the small model.
        self.contexts = contexts if contexts is not None else []
        self._bind: Any = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._bind = binder(type(module))
        return module

    def new_forward(self, module: Any, *args: Any, **kwargs: Any) -> Any:
        if args:
            kwargs = self._bind(args, kwargs)
        x = kwargs["hidden_states"]
        back_device, back_dtype = x.device, x.dtype
        kwargs, state = self.handoff.map_inputs(kwargs)
        dtype = module.dtype
        for name in ACTIVATION_INPUTS:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
                kwargs[name] = value.to(dtype)
        if self.device is not None:
            kwargs = {k: _move(v, self.device) for k, v in kwargs.items()}
        with contextlib.ExitStack() as stack:
            for make_context in self.contexts:
                stack.enter_context(make_context())
            forward = self.fn_ref.original_forward
            assert forward is not None  # set when diffusers registered the hook
            output = forward(**kwargs)
        return replace_sample(output, lambda v: self.handoff.map_output(v.to(back_device), state).to(back_dtype))
