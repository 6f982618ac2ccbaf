"""TeaCache (ali-vilab/TeaCache) for diffusers' Wan and CogVideoX transformers, written as diffusers hooks.

The published method: keep a running sum of the relative L1 change of the timestep-modulated input between
consecutive calls, rescaled by a per-model polynomial; while the sum stays under the threshold, skip the
transformer blocks and add the residual cached at the last computed call; otherwise compute and reset the
sum. The first step (the first 5 with ``ret_steps``) and the last step are always computed.

State lives per transformer and per CFG branch, keyed on the pipeline's ``cache_context`` name (a diffusers
``StateManager``), and is reset at the start of every pipeline call; the step index comes from the call
tracker, never from counting calls. A threshold of 0 never skips.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .. import compat
from ..instance.arguments import binder
from ..pipeline.calls import CallTracker
from .registry import Acceleration, refuse_a_second_block_cache, register_acceleration

if TYPE_CHECKING:
    from . import Accelerations

BaseState, StateManager = compat.hook_state_classes()

#: Steps always computed at the start: the first step, or the first 5 in the published "ret steps" mode.
WARMUP_STEPS = 1
RET_WARMUP_STEPS = 5

_LEADER = "sr_plugin_teacache_leader"
_BLOCK = "sr_plugin_teacache_block"
_INPUT = "sr_plugin_teacache_input"


@dataclass(frozen=True)
class TeaCacheConfig:
    """``threshold``: skip while the accumulated rescaled change stays below it (0 disables skipping); one
    number, or ``{"large": ..., "small": ...}`` (the two models' distances have different scales).
    ``coefficients``: None (a calibration shipped beside the model's weights, else the published set matching
    the model's config), a preset name ("identity" for any family), five numbers,
    or a mapping ``{"large": ..., "small": ...}`` of those. ``ret_steps``: Wan's "ret steps" variant."""

    threshold: float | Mapping[str, float]
    coefficients: str | Sequence[float] | Mapping[str, Any] | None = None
    ret_steps: bool = False

    def __post_init__(self) -> None:
        values = self.threshold.values() if isinstance(self.threshold, Mapping) else [self.threshold]
        for t in values:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
                raise ValueError(f"TeaCache threshold must be a finite number >= 0, got {t!r}")

    def threshold_for(self, role: str) -> float:
        if not isinstance(self.threshold, Mapping):
            return float(self.threshold)
        if role not in self.threshold:
            raise ValueError(f"TeaCache thresholds given per model have no entry for the {role} transformer")
        return float(self.threshold[role])


#: The identity polynomial, by name for every family: the rescaled distance is the relative L1 change itself
#: (for models no coefficients were fitted to, such as random tiny ones).
IDENTITY = "identity"
IDENTITY_COEFFICIENTS: tuple[float, ...] = (1.0, 0.0)

#: Highest polynomial degree accepted (TeaCache publishes degree 4).
MAX_DEGREE = 8


def check_coefficients(values: Sequence[float], degree: int | None = None) -> tuple[float, ...]:
    """Finite numbers, as many as the degree asks (1 to MAX_DEGREE + 1 when no degree is given)."""
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(f"TeaCache coefficients must be a preset name or finite numbers, got {values!r}") from None
    expected = f"{degree + 1}" if degree is not None else f"1 to {MAX_DEGREE + 1}"
    if (degree is not None and len(values) != degree + 1) or not 1 <= len(values) <= MAX_DEGREE + 1:
        raise ValueError(
            f"TeaCache coefficients must be {expected} numbers (highest degree first), got {len(values)}: {values!r}"
        )
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError(f"TeaCache coefficients must be finite numbers, got {values!r}")
    return tuple(float(v) for v in values)


def rescale(coefficients: Sequence[float], x: float) -> float:
    """The polynomial in numpy.poly1d order (highest degree first), by Horner's rule."""
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value


#: A TeaCache calibration shipped beside a model's weights (in its config.json's folder): the default
#: coefficients for that model, ahead of the published presets. Written by `save_beside_weights`.
CALIBRATION_FILE = "teacache.json"


def _config_fingerprint(model: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(model.config).items() if not k.startswith("_")}


def _weights_folders(model: Any) -> list[pathlib.Path]:
    """Where ``from_pretrained`` read the model's config: its path, or that path's ``transformer`` subfolder
    (diffusers records the path without the subfolder when one is given)."""
    source = model.config.get("_name_or_path") if hasattr(model, "config") else None
    if not source or not os.path.isdir(source):
        return []
    return [pathlib.Path(source), pathlib.Path(source) / "transformer"]


def save_beside_weights(
    folder: str | os.PathLike[str],
    model: torch.nn.Module,
    coefficients: Sequence[float],
    r_squared: float,
    ret_steps: bool = False,
    note: str = "",
) -> pathlib.Path:
    """Write ``coefficients`` as the default TeaCache polynomial of the model saved in ``folder`` (the folder
    holding its config.json); the model's config is recorded, so a different model never picks it up."""
    path = pathlib.Path(folder) / CALIBRATION_FILE
    data = {
        "coefficients": list(check_coefficients(coefficients)),
        "r_squared": float(r_squared),
        "ret_steps": bool(ret_steps),
        "note": note,
        "model_config": _config_fingerprint(model),
    }
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def coefficients_beside_weights(model: torch.nn.Module, ret_steps: bool) -> tuple[float, ...] | None:
    """The coefficients of a calibration file beside the model's weights, if one matches this model's config
    and mode; a file that exists but cannot be read is an error, not a silent fallback."""
    for folder in _weights_folders(model):
        path = folder / CALIBRATION_FILE
        if not path.is_file() or not (folder / "config.json").is_file():
            continue
        try:
            data = json.loads(path.read_text())
            coefficients = check_coefficients(data["coefficients"])
            recorded = data["model_config"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"the TeaCache calibration {path} cannot be read ({err}); fix or delete it") from None
        fingerprint = json.loads(json.dumps(_config_fingerprint(model)))  # tuples as lists, as in the file
        if recorded == fingerprint and bool(data.get("ret_steps", False)) == ret_steps:
            return coefficients
    return None


def resolve_coefficients(config: TeaCacheConfig, adapter: Any, model: Any, role: str) -> tuple[float, ...]:
    """The coefficients this model uses; a clear error for an unknown name or an unmatched model."""
    config.threshold_for(role)
    spec = config.coefficients
    if isinstance(spec, Mapping):
        if role not in spec:
            raise ValueError(
                f"TeaCache coefficients given per model have no entry for the {role} transformer "
                f"(keys: {', '.join(map(str, spec))})"
            )
        spec = spec[role]
    if spec is None:
        spec = coefficients_beside_weights(model, config.ret_steps) or adapter.teacache_preset(model, config.ret_steps)
        if spec is None:
            c = model.config
            raise ValueError(
                f"the {role} {type(model).__name__} (num_layers={c.num_layers}, num_attention_heads="
                f"{c.num_attention_heads}) matches no published TeaCache coefficients; pass coefficients= "
                f"(one of {', '.join(adapter.teacache_coefficients)}, or five numbers)"
            )
    if spec == IDENTITY:
        return IDENTITY_COEFFICIENTS
    if isinstance(spec, str):
        if spec not in adapter.teacache_coefficients:
            raise ValueError(
                f"unknown TeaCache coefficients {spec!r} for {adapter.name}; known: "
                f"{', '.join(adapter.teacache_coefficients)}"
            )
        if config.ret_steps != spec.endswith("-ret"):
            raise ValueError(f"TeaCache coefficients {spec!r} do not go with ret_steps={config.ret_steps}")
        return tuple(adapter.teacache_coefficients[spec])
    return check_coefficients(spec)


class TeaCacheState(BaseState):  # type: ignore[misc,valid-type]  # diffusers' base class, read in compat
    """One transformer's state for one CFG branch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.accumulated = 0.0
        self.previous: torch.Tensor | None = None
        #: Per stream the last block returns ("hidden_states", "encoder_hidden_states", ...): output - input.
        self.residuals: dict[str, torch.Tensor] = {}

    def decide(
        self,
        modulated: torch.Tensor,
        step: int,
        num_steps: int,
        threshold: float,
        coefficients: Sequence[float],
        warmup: int,
        agree: Any = None,
    ) -> bool:
        """The published rule: True to compute the blocks, False to reuse the cached residual."""
        forced = self.previous is None or threshold <= 0 or step < warmup or step >= num_steps - 1 or not self.residuals
        if forced:
            compute = True
        else:
            prev = self.previous
            assert prev is not None
            change = (modulated - prev).abs().mean() / prev.abs().mean()
            rel = float((agree(change) if agree is not None else change).item())  # the one host read per call
            self.accumulated += rescale(coefficients, rel)
            compute = self.accumulated >= threshold
        if compute:
            self.accumulated = 0.0
        self.previous = modulated
        return compute


class _ModelTeaCache:
    """Everything the hooks of one transformer share."""

    def __init__(
        self,
        tracker: CallTracker,
        role: str,
        config: TeaCacheConfig,
        coefficients: tuple[float, ...],
        source: tuple[str, Any],
    ) -> None:
        self.tracker = tracker
        self.role = role
        self.threshold = config.threshold_for(role)
        self.coefficients = coefficients
        self.warmup = RET_WARMUP_STEPS if config.ret_steps else WARMUP_STEPS
        self.source = source
        self.state_manager = StateManager(TeaCacheState)
        self.captured: torch.Tensor | None = None
        self.skip = False
        #: The first block's inputs of the streams the last block returns, while a computed pass runs.
        self.block_input: dict[str, torch.Tensor] | None = None
        #: The last block's return layout: the streams that carry a residual.
        self.streams: tuple[str, ...] = ("hidden_states",)


def _binder(block: torch.nn.Module):
    return binder(type(block))


class _InputCaptureHook(ModelHook):
    """Keeps the output of the module the modulated input comes from (Wan's condition embedder)."""

    def __init__(self, shared: _ModelTeaCache, index: int) -> None:
        super().__init__()
        self.shared, self.index = shared, index

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        if self.shared.tracker.active:
            self.shared.captured = output[self.index]
        return output


class _BlockHook(ModelHook):
    """On every block: the first decides, the others follow; the last adds or stores the residuals. A skipped
    block returns its inputs in its own return layout (``layout``: argument names)."""

    def __init__(self, shared: _ModelTeaCache, first: bool, last: bool, bind: Any, layout: tuple[str, ...]) -> None:
        super().__init__()
        self.shared, self.first, self.last, self.bind, self.layout = shared, first, last, bind, layout
        if first:
            compat.mark_stateful(self)
            self.state_manager = shared.state_manager  # receives the pipeline's cache_context

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.shared.state_manager.reset()
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        sh = self.shared
        forward = self.fn_ref.original_forward
        assert forward is not None  # set when diffusers registered the hook
        if not sh.tracker.active:  # a call of another pipeline sharing this model: not ours to cache
            return forward(*args, **kwargs)
        bound = self.bind(args, kwargs)
        state = sh.state_manager.get_state()
        if self.first:
            modulated = bound[sh.source[1]] if sh.source[0] == "block_arg" else sh.captured
            tracker = sh.tracker
            compute = state.decide(
                modulated, tracker.step, tracker.num_steps, sh.threshold, sh.coefficients, sh.warmup, tracker.agree
            )
            tracker.notes.note("cache", sh.role, sh.state_manager.context.name, "computed" if compute else "skipped")
            sh.skip = not compute
            if compute:
                sh.block_input = {name: bound[name] for name in sh.streams}
        if sh.skip:
            return self._reuse(bound, state)
        output = forward(*args, **kwargs)
        if self.last:
            returned = dict(zip(self.layout, output if isinstance(output, tuple) else (output,)))
            assert sh.block_input is not None
            state.residuals = {name: returned[name] - sh.block_input[name] for name in self.layout}
            sh.block_input = None
        return output

    def _reuse(self, bound: dict[str, Any], state: TeaCacheState) -> Any:
        values = [bound[name] + state.residuals[name] if self.last else bound[name] for name in self.layout]
        return values[0] if len(values) == 1 else tuple(values)


def apply_teacache(
    model: torch.nn.Module,
    adapter: Any,
    tracker: CallTracker,
    role: str,
    config: TeaCacheConfig,
    coefficients: tuple[float, ...] | None = None,
) -> _ModelTeaCache:
    """Register TeaCache's hooks on ``model``'s blocks (undo with `remove_teacache`); ``coefficients``: already
    resolved for this model (else resolved here)."""
    if coefficients is None:
        coefficients = resolve_coefficients(config, adapter, model, role)
    source = adapter.teacache_input(model, config.ret_steps)
    blocks = adapter.blocks_with_layouts(model)
    shared = _ModelTeaCache(tracker, role, config, coefficients, source)
    shared.streams = blocks[-1][1]
    if source[0] == "output_of":
        HookRegistry.check_if_exists_or_initialize(source[1]).register_hook(
            _InputCaptureHook(shared, source[2]), _INPUT
        )
    for i, (block, layout) in enumerate(blocks):
        hook = _BlockHook(shared, first=i == 0, last=i == len(blocks) - 1, bind=_binder(block), layout=layout)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _LEADER if i == 0 else _BLOCK)
    HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()
    return shared


def remove_teacache(model: torch.nn.Module) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(model)
    for name in (_LEADER, _BLOCK, _INPUT):
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()


@register_acceleration
class TeaCache(Acceleration):
    """TeaCache: skip the blocks while the rescaled change of the modulated input stays under the threshold."""

    keyword = "teacache"
    config_types = (TeaCacheConfig,)
    order = 10
    caches = True
    excludes = {"fbcache": "teacache and fbcache both cache the blocks' residual: choose one"}

    def __init__(self, config: TeaCacheConfig) -> None:
        super().__init__(config)
        #: The coefficients per role and model, resolved (a calibration file beside the weights read) once.
        self._coefficients: dict[str, weakref.WeakKeyDictionary] = {}

    @classmethod
    def from_keyword(cls, value: Any) -> TeaCache | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise TypeError("teacache takes a threshold or a TeaCacheConfig, not a bool")
        config = TeaCacheConfig(value) if isinstance(value, (int, float)) else value
        if not isinstance(config, TeaCacheConfig):
            raise TypeError(f"teacache must be a threshold or a TeaCacheConfig, got {type(value).__name__}")
        return cls(config)

    def check(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        resolved = self._coefficients.setdefault(role, weakref.WeakKeyDictionary())
        if model not in resolved:
            ctx.adapter.teacache_input(model, self.config.ret_steps)
            resolved[model] = resolve_coefficients(self.config, ctx.adapter, model, role)
        refuse_a_second_block_cache(model, role, "TeaCache")

    def attach(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        apply_teacache(model, ctx.adapter, ctx.calls, role, self.config, self._coefficients[role][model])

    def detach(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        remove_teacache(model)
