"""Accelerations as typed configs found through a registry: the typed and the keyword forms are one thing, and a new
acceleration is one class that registers itself."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import FirstBlockCacheConfig
from pipeline_helpers import LINEAR, MIX, run

import sr_plugin
from sr_plugin import CompileConfig, PABConfig, TeaCacheConfig
from sr_plugin.accel import Acceleration, accelerations_of, register_acceleration, registered
from sr_plugin.accel import registry as registry_module
from sr_plugin.lab.tiny import tiny_pair


@pytest.mark.parametrize("stack", ["teacache+pab", "fbcache", "compile"])
def test_the_keyword_and_the_typed_forms_give_bit_equal_outputs(family, stack):
    typed = {
        "teacache+pab": (TeaCacheConfig(MIX[family], LINEAR), PABConfig(2, 2, (0, 1000))),
        "fbcache": (FirstBlockCacheConfig(threshold=0.2),),
        "compile": (CompileConfig({"backend": "eager"}),),
    }[stack]
    keywords = {
        "teacache+pab": {"teacache": TeaCacheConfig(MIX[family], LINEAR), "pab": PABConfig(2, 2, (0, 1000))},
        "fbcache": {"fbcache": 0.2},
        "compile": {"compile": {"backend": "eager"}},
    }[stack]
    outputs = []
    for form in ("typed", "keywords"):
        pipe, small = tiny_pair(family)
        sr_plugin.apply(pipe, small, switch_step=3)
        handle = sr_plugin.accelerate(pipe, *typed) if form == "typed" else sr_plugin.accelerate(pipe, **keywords)
        outputs.append((run(pipe, family), accelerations_of(pipe).configs, [r.as_dict() for r in handle.trace]))
    (a, configs_a, trace_a), (b, configs_b, trace_b) = outputs
    assert torch.equal(a, b) and trace_a == trace_b
    assert configs_a.keys() == configs_b.keys()


def test_configs_are_refused_clearly():
    pipe, _ = tiny_pair("wan")
    with pytest.raises(TypeError, match="takes acceleration configs .* got a dict"):
        sr_plugin.accelerate(pipe, {"teacache": 0.1})
    with pytest.raises(ValueError, match="teacache is asked for twice"):
        sr_plugin.accelerate(pipe, TeaCacheConfig(0.1), teacache=0.2)
    with pytest.raises(ValueError, match="choose one"):
        sr_plugin.accelerate(pipe, TeaCacheConfig(0.1), FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(TypeError, match="unknown acceleration"):
        sr_plugin.accelerate(pipe, turbo=True)
    assert accelerations_of(pipe) is None


@dataclasses.dataclass
class ScaleConfig:
    factor: float


class Scale(Acceleration):
    """A toy acceleration: scales the first block's output (so that its effect can be seen)."""

    keyword = "scale"
    config_types = (ScaleConfig,)
    order = 40

    @classmethod
    def from_keyword(cls, value):
        return None if value is None else cls(ScaleConfig(float(value)))

    def attach(self, ctx, model, role):
        block = ctx.adapter.blocks(model)[0]
        self.handle = getattr(self, "handles", {})
        self.handles = {
            **self.handle,
            role: block.register_forward_hook(
                lambda module, args, out: out * self.config.factor if isinstance(out, torch.Tensor) else out
            ),
        }

    def detach(self, ctx, model, role):
        self.handles.pop(role).remove()


def test_a_new_acceleration_is_one_class_that_registers_itself(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    register_acceleration(Scale)
    assert list(registered())[-1] == "scale"
    pipe, small = tiny_pair("wan")
    plain = run(pipe, "wan")
    handle = sr_plugin.accelerate(pipe, ScaleConfig(0.5))
    scaled = run(pipe, "wan")
    handle.remove()
    assert not torch.equal(scaled, plain) and torch.equal(run(pipe, "wan"), plain)
    handle = sr_plugin.accelerate(pipe, scale=0.5)
    assert torch.equal(run(pipe, "wan"), scaled)
    with pytest.raises(TypeError, match="must name its keyword"):
        register_acceleration(type("Nameless", (Acceleration,), {}))


def test_the_handle_says_what_it_holds():
    pipe, small = tiny_pair("wan")
    accel = sr_plugin.accelerate(pipe, teacache=sr_plugin.TeaCacheConfig(0.1, "identity"))
    assert repr(accel).startswith("AccelHandle(WanPipeline, teacache=TeaCacheConfig(threshold=0.1")
    assert repr(accel).endswith("on large)")
    accel.remove()
    assert repr(accel) == "AccelHandle(WanPipeline, removed)"
