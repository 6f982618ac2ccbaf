"""`sr_plugin.accelerate`: TeaCache, CFG-aware PAB, First Block Cache and regional compile on both transformers.

Works with or without the switch, in either order relative to `sr_plugin.apply`: the large transformer gets
the accelerations now, the small one as soon as it joins the pipeline's call tracker (the switch never calls
in here; the tracker announces its models) (each with its own state and, for
TeaCache, its own coefficients); `remove` on either handle takes back exactly what it added.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any

import torch

from .. import compat
from ..adapters import FamilyAdapter, adapter_for
from ..integrations.cache_dit_mirror import cache_dit_config
from ..pipeline.calls import CallTracker, models_in_play
from ..instance.patching import InstancePatches, drop_hook_residue
from ..pipeline.trace import StepRecord
from .calibrate import TeaCacheCalibration, calibrate_teacache, fit_rescale
from .compile import DEFAULT_OPTIONS, check_compilable, compile_blocks
from .pab import PABConfig, apply_cfg_pab, remove_cfg_pab
from .teacache import TeaCacheConfig, apply_teacache, remove_teacache, resolve_coefficients

#: Attribute on the pipeline instance pointing at its Accelerations.
ACCEL_ATTR = "_sr_plugin_accel"


class Accelerations:
    """The accelerations of one pipeline: applied per model ("large", "small"), reset at every call."""

    def __init__(self, pipe: Any, adapter: FamilyAdapter, teacache: TeaCacheConfig | None, pab: PABConfig | None,
                 fbcache: float | None, compile_options: dict[str, Any] | None) -> None:
        self.pipe = pipe
        self.adapter = adapter
        self.teacache = teacache
        self.pab = pab
        self.fbcache = fbcache
        self.compile_options = compile_options
        self.tracker: CallTracker | None = None  # set by `install`, once every check has passed
        self.models: dict[str, torch.nn.Module] = {}
        self._compiled: dict[str, InstancePatches] = {}
        #: TeaCache's coefficients per role and model, resolved (a calibration file beside the weights read) once.
        self._coefficients: dict[str, weakref.WeakKeyDictionary] = {}
        #: Per step of the last call, as the tracker records it (`CallTracker.records`).
        self.trace: list[StepRecord] = []

    # ------------------------------------------------------------------ per model
    def check(self, model: torch.nn.Module, role: str) -> None:
        """Every error this model would raise, before anything is changed."""
        resolved = self._coefficients.setdefault(role, weakref.WeakKeyDictionary())
        if self.teacache is not None and model not in resolved:
            self.adapter.teacache_input(model, self.teacache.ret_steps)
            resolved[model] = resolve_coefficients(self.teacache, self.adapter, model, role)
        if self.compile_options is not None:
            check_compilable(model, self.adapter.blocks(model), role)
        owner = _accelerated_by(model)
        if owner is not None and owner is not self:
            raise ValueError(f"the {role} transformer already carries sr_plugin accelerations of another pipeline "
                             f"(a {type(owner.pipe).__name__}); remove that pipeline's accelerate handle first, or "
                             "give this pipeline its own copy of the model")
        if self.fbcache is not None and len(self.adapter.blocks(model)) < 2:
            raise ValueError(f"First Block Cache needs at least two transformer blocks (the first decides, the rest "
                             f"are cached); the {role} transformer has {len(self.adapter.blocks(model))}")
        if (self.teacache is not None or self.fbcache is not None) and cache_dit_config(model) is not None:
            raise ValueError(f"cache-dit already caches the {role} transformer's blocks; "
                             f"{'TeaCache' if self.teacache is not None else 'First Block Cache'} would cache them "
                             "a second time: choose one (cache_dit.disable_cache(pipe), or drop it here)")
        if self.fbcache is not None and compat.cache_config(model) is not None:
            raise ValueError(f"the {role} transformer already has a diffusers cache enabled "
                             f"({type(compat.cache_config(model)).__name__}); disable it or drop fbcache=")

    def install(self) -> None:
        """Join the pipeline's call tracker (after every check passed: a failed check changes nothing)."""
        self.tracker = CallTracker.of(self.pipe)
        if self.pab is not None and self.pab.current_timestep_callback is None:
            tracker = self.tracker
            self.pab = dataclasses.replace(self.pab, current_timestep_callback=lambda: tracker.current_timestep)
        self.tracker.add(self, first=True)
        object.__setattr__(self.pipe, ACCEL_ATTR, self)

    def attach(self, model: torch.nn.Module, role: str) -> None:
        """Apply every requested acceleration to ``model``, all or nothing. Compile first, so the hooks stay
        outside it."""
        self.check(model, role)
        self.models[role] = model
        model.__dict__[_OWNER_ATTR] = self
        self.tracker.track(model)
        try:
            if self.compile_options is not None:
                self._compiled[role] = compile_blocks(self.adapter.blocks(model), self.compile_options)
            if self.teacache is not None:
                apply_teacache(model, self.adapter, self.tracker, role, self.teacache,
                               self._coefficients[role][model])
            if self.pab is not None:
                tracker = self.tracker
                apply_cfg_pab(model, self.adapter.attention_modules(model), self.pab,
                              log=lambda branch, computed: tracker.log_attention(role, branch, computed))
            if self.fbcache is not None:
                from diffusers import FirstBlockCacheConfig

                model.enable_cache(FirstBlockCacheConfig(threshold=self.fbcache))
        except BaseException:
            self.detach(role)
            raise

    def detach(self, role: str) -> None:
        model = self.models.pop(role, None)
        if model is None:
            return
        self.tracker.untrack(model)
        if self.fbcache is not None and compat.cache_config(model) is not None:
            model.disable_cache()
        if self.pab is not None:
            remove_cfg_pab(model)
        if self.teacache is not None:
            remove_teacache(model)
        patches = self._compiled.pop(role, None)
        if patches is not None:
            patches.undo()
        drop_hook_residue(model)
        if model.__dict__.get(_OWNER_ATTR) is self:
            del model.__dict__[_OWNER_ATTR]

    # ------------------------------------------------------------------ models joining and leaving (the tracker)
    def check_model(self, model: torch.nn.Module, role: str) -> None:
        self.check(model, role)

    def model_joined(self, model: torch.nn.Module, role: str) -> None:
        self.attach(model, role)

    def model_left(self, model: torch.nn.Module, role: str) -> None:
        self.detach(role)

    # ------------------------------------------------------------------ per call
    def begin(self, calls: CallTracker) -> None:
        pass  # the tracker gives every tracked model fresh cache state (and group-wide decisions) per call

    def after_step(self, calls: CallTracker, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        pass

    def end(self, calls: CallTracker) -> None:
        self.trace = calls.records()


class AccelHandle:
    """Returned by `accelerate`; `remove` takes every acceleration off both transformers."""

    def __init__(self, accel: Accelerations) -> None:
        self._accel = accel
        self.removed = False

    @property
    def trace(self) -> list[StepRecord]:
        """Per step of the last call, the same records as the switch's `handle.trace` (without its metric):
        which model ran the step, and per branch whether its blocks were computed or skipped (TeaCache, First
        Block Cache) and its attention computed or reused (PAB)."""
        return list(self._accel.trace)

    def remove(self) -> None:
        if self.removed:
            return
        accel = self._accel
        if accel.tracker.active:
            raise RuntimeError("sr_plugin: cannot remove accelerations while the pipeline is running")
        for role in list(accel.models):
            accel.detach(role)
        accel.tracker.discard(accel)
        accel.pipe.__dict__.pop(ACCEL_ATTR, None)
        self.removed = True


def accelerate(
    pipe: Any,
    *,
    teacache: float | TeaCacheConfig | None = None,
    pab: bool | PABConfig = False,
    fbcache: float | None = None,
    compile: bool | dict[str, Any] | None = False,
) -> AccelHandle:
    """Stack accelerations on the pipeline's transformer and, with the switch, on the small one too.

    Args:
        teacache: a threshold (coefficients chosen by each model's config) or a `TeaCacheConfig`.
        pab: True for CFG-aware Pyramid Attention Broadcast with defaults (self-attention every 2nd call in
            timesteps (100, 800)), or a `PABConfig`. Its timestep source is the pipeline's call tracker.
        fbcache: threshold of diffusers' First Block Cache (`FirstBlockCacheConfig`), on each model.
        compile: True for regional torch.compile of the blocks (fullgraph, static shapes), or a dict of
            `torch.compile` options; False or None for none (anything else is an error). The first call compiles (a warm-up); later calls, switching or not,
            do not recompile.
    All checks run before anything changes. Returns a handle whose `remove` undoes all of it.
    """
    adapter = adapter_for(pipe)
    if pipe.__dict__.get(ACCEL_ATTR) is not None:
        raise RuntimeError("sr_plugin.accelerate was already called on this pipeline; remove its handle first")
    if getattr(pipe, "transformer", None) is None:
        raise ValueError(f"this {type(pipe).__name__} has no transformer to accelerate")
    if isinstance(teacache, bool):
        raise TypeError("teacache takes a threshold or a TeaCacheConfig, not a bool")
    teacache_config = TeaCacheConfig(teacache) if isinstance(teacache, (int, float)) else teacache
    if teacache_config is not None and not isinstance(teacache_config, TeaCacheConfig):
        raise TypeError(f"teacache must be a threshold or a TeaCacheConfig, got {type(teacache).__name__}")
    if fbcache is not None and (isinstance(fbcache, bool) or not isinstance(fbcache, (int, float))
                                or not math.isfinite(fbcache) or fbcache < 0):
        raise ValueError(f"fbcache must be a threshold >= 0, got {fbcache!r}")
    if teacache_config is not None and fbcache is not None:
        raise ValueError("teacache and fbcache both cache the blocks' residual: choose one")
    pab_config = _pab_config(pab)
    if compile is not None and not isinstance(compile, (bool, dict)):
        raise TypeError(f"compile must be True, False, None or a dict of torch.compile options, got {compile!r}")
    compile_options = (None if compile is None or compile is False
                       else {**DEFAULT_OPTIONS, **(compile if isinstance(compile, dict) else {})})
    if pab_config is not None and compile_options is not None:
        compile_options["fullgraph"] = False  # PAB's per-branch decision is a graph break inside each block

    accel = Accelerations(pipe, adapter, teacache_config, pab_config, fbcache, compile_options)
    models = models_in_play(pipe)  # "large", and "small" once the switch is applied
    for role, model in models.items():
        accel.check(model, role)
    accel.install()
    handle = AccelHandle(accel)
    try:
        for role, model in models.items():
            accel.attach(model, role)
    except BaseException:
        handle.remove()  # all or nothing: what attached comes off, the tracker forgets it
        raise
    return handle


#: Marks a model carrying accelerations (its hooks keep per-model state): the Accelerations that put them.
_OWNER_ATTR = "_sr_plugin_accelerated_by"


def _accelerated_by(model: torch.nn.Module) -> "Accelerations | None":
    return model.__dict__.get(_OWNER_ATTR)


def _pab_config(pab: bool | PABConfig) -> PABConfig | None:
    if pab is False or pab is None:
        return None
    config = PABConfig() if pab is True else pab
    if not isinstance(config, PABConfig):
        raise TypeError(f"pab must be True or a PABConfig, got {type(pab).__name__}")
    return config


def accelerations_of(pipe: Any) -> Accelerations | None:
    return pipe.__dict__.get(ACCEL_ATTR)


__all__ = ["AccelHandle", "PABConfig", "TeaCacheCalibration", "TeaCacheConfig", "accelerate", "accelerations_of",
           "calibrate_teacache", "fit_rescale"]
