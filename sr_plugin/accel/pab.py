"""Pyramid Attention Broadcast with one state per CFG branch.

diffusers' PAB hook keeps one state per attention module. WanPipeline runs CFG as two calls per step, so
there the uncond call gets the attention output the cond call cached. Here the state (iteration count and
cached output) lives in a diffusers ``StateManager`` keyed on the pipeline's ``cache_context`` name, so the
branches never exchange cached attention, while each branch still reuses its own.

Rule, per attention module and branch (as published and as in diffusers): compute when nothing is cached,
on the branch's first call, outside the timestep range, or every ``skip_range``-th call; else reuse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .. import compat
from .registry import Acceleration, register_acceleration

if TYPE_CHECKING:
    from . import Accelerations

BaseState, StateManager = compat.hook_state_classes()

_PAB = "sr_plugin_cfg_pab"

#: diffusers' default range of timesteps (exclusive) where PAB may reuse attention: the middle of the
#: schedule, where attention changes slowly; the first and last steps are always computed.
DEFAULT_TIMESTEP_RANGE = (100.0, 800.0)


@dataclass
class PABConfig:
    """``self_attention_skip_range``: compute self-attention every k-th call (1: always; None: no PAB).
    ``cross_attention_skip_range``: the same for cross-attention (Wan). ``current_timestep_callback``:
    returns the timestep now running (`sr_plugin.accelerate` fills it from the pipeline)."""

    self_attention_skip_range: int | None = 2
    cross_attention_skip_range: int | None = None
    timestep_range: tuple[float, float] = DEFAULT_TIMESTEP_RANGE
    current_timestep_callback: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        for name in ("self_attention_skip_range", "cross_attention_skip_range"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"PAB {name} must be an int >= 1 or None, got {value!r}")
        lo, hi = self.timestep_range
        if not lo < hi:
            raise ValueError(f"PAB timestep_range must be (low, high) with low < high, got {self.timestep_range!r}")


class PABState(BaseState):  # type: ignore[misc,valid-type]  # diffusers' base class, read in compat
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.iteration = 0
        self.cache: Any = None


@compat.mark_stateful
class CFGAwarePABHook(ModelHook):
    def __init__(
        self,
        skip_range: int,
        timestep_range: tuple[float, float],
        current_timestep: Callable[[], Any],
        log: Callable[[str, bool], None] | None = None,
    ):
        super().__init__()
        self.log = log
        self.skip_range = skip_range
        self.timestep_range = timestep_range
        self.current_timestep = current_timestep
        self.state_manager = StateManager(PABState)
        #: Bytes of the attention output cached, per CFG branch (what PAB holds in memory for this module).
        self.cached_bytes: dict[str, int] = {}

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        self.cached_bytes = {}
        return module

    @torch.compiler.disable  # Python state decides here: keep it out of compiled blocks (a graph break)
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward = self.fn_ref.original_forward
        assert forward is not None  # set when diffusers registered the hook
        t = self.current_timestep()
        if t is None:  # outside its pipeline's denoising loop (another pipeline sharing the model): plain
            return forward(*args, **kwargs)
        state = self.state_manager.get_state()
        within = t is not None and self.timestep_range[0] < float(t) < self.timestep_range[1]
        compute = state.cache is None or state.iteration == 0 or not within or state.iteration % self.skip_range == 0
        if self.log is not None:
            self.log(self.state_manager.context.name, compute)
        output = forward(*args, **kwargs) if compute else state.cache
        state.cache = output
        state.iteration += 1
        if compute:
            self.cached_bytes[self.state_manager.context.name] = _nbytes(output)
        return output


def apply_cfg_pab(
    model: torch.nn.Module,
    attention_modules: list[tuple[torch.nn.Module, str]],
    config: PABConfig,
    log: Callable[[str, bool], None] | None = None,
) -> int:
    """Register the per-branch PAB hook on the attention modules; returns how many got one. ``log(branch,
    computed)`` hears every decision (the trace)."""
    if config.current_timestep_callback is None:
        raise ValueError(
            "PAB needs a current-timestep source: set PABConfig.current_timestep_callback "
            "(sr_plugin.accelerate sets it from the pipeline)"
        )
    count = 0
    for module, kind in attention_modules:
        skip = config.self_attention_skip_range if kind == "self" else config.cross_attention_skip_range
        if skip is None:
            continue
        low, high = config.timestep_range
        hook = CFGAwarePABHook(skip, (low, high), config.current_timestep_callback, log)
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, _PAB)
        count += 1
    HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()
    return count


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def pab_cache_bytes(model: torch.nn.Module) -> int:
    """The bytes PAB holds for ``model`` now: the cached attention outputs of every module and CFG branch (read
    during a call; the call tracker frees them at its end)."""
    total = 0
    for module in model.modules():
        registry = compat.hook_registry(module)
        hook = registry.get_hook(_PAB) if registry is not None else None
        if hook is not None:
            total += sum(hook.cached_bytes.values())
    return total


def remove_cfg_pab(model: torch.nn.Module) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.remove_hook(_PAB, recurse=True)
    registry.invalidate_child_registries_cache()


def attention_summary(computed: int, called: int) -> str:
    """How a step's attention reads in the trace: "computed", "reused", or "reused k of n" modules."""
    if computed == called:
        return "computed"
    return "reused" if computed == 0 else f"reused {called - computed} of {called}"


def add_counts(noted: tuple[int, int], new: tuple[int, int]) -> tuple[int, int]:
    """(attention modules computed, attention modules called), summed over a step's calls."""
    return noted[0] + new[0], noted[1] + new[1]


@register_acceleration
class PyramidAttentionBroadcast(Acceleration):
    """CFG-aware PAB: attention outputs reused per CFG branch, its timestep read from the call tracker."""

    keyword = "pab"
    config_types = (PABConfig,)
    order = 20
    caches = True
    #: Its per-branch decision is Python inside each block: compiled blocks get a graph break there.
    breaks_graphs = True

    @classmethod
    def from_keyword(cls, value: Any) -> PyramidAttentionBroadcast | None:
        if value is False or value is None:
            return None
        config = PABConfig() if value is True else value
        if not isinstance(config, PABConfig):
            raise TypeError(f"pab must be True or a PABConfig, got {type(value).__name__}")
        return cls(config)

    def attach(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        tracker = ctx.calls
        config = self.config
        if config.current_timestep_callback is None:
            config = dataclasses.replace(config, current_timestep_callback=lambda: tracker.current_timestep)
        tracker.notes.renderers["attention"] = lambda counts: attention_summary(*counts)
        apply_cfg_pab(
            model,
            ctx.adapter.attention_modules(model),
            config,
            log=lambda branch, computed: tracker.notes.note(
                "attention", role, branch, (int(computed), 1), merge=add_counts
            ),
        )

    def detach(self, ctx: Accelerations, model: torch.nn.Module, role: str) -> None:
        remove_cfg_pab(model)
