"""accelerate and apply in either order give the same result; removing both restores the plain pipeline."""

from __future__ import annotations

import pytest
import torch
from pipeline_helpers import LINEAR, MIX, run

import sr_plugin
from sr_plugin import PABConfig, TeaCacheConfig
from sr_plugin.lab.tiny import tiny_pair


def stack(family):
    return {"teacache": TeaCacheConfig(MIX[family], LINEAR), "pab": PABConfig(2, 2, (0, 1000))}


def no_hooks_left(model) -> bool:
    return all(not getattr(m, "_diffusers_hook", None) or not m._diffusers_hook.hooks for m in model.modules())


@pytest.mark.parametrize("mode", [{"switch_step": 4}, {}])
def test_order_of_accelerate_and_apply_does_not_matter(family, mode):
    baseline = run(tiny_pair(family)[0], family)
    p1, s1 = tiny_pair(family)
    sr1 = sr_plugin.apply(p1, s1, **mode)
    acc1 = sr_plugin.accelerate(p1, **stack(family))
    p2, s2 = tiny_pair(family)
    acc2 = sr_plugin.accelerate(p2, **stack(family))
    sr2 = sr_plugin.apply(p2, s2, **mode)
    out1, out2 = run(p1, family), run(p2, family)
    assert torch.equal(out1, out2) and sr1.trace == sr2.trace and acc1.trace == acc2.trace
    assert any(r.cache and "skipped" in r.cache.values() for r in sr1.trace if r.model == "small")
    # remove in either order
    sr1.remove()
    acc1.remove()
    acc2.remove()
    sr2.remove()
    for pipe, small in ((p1, s1), (p2, s2)):
        assert torch.equal(run(pipe, family), baseline)
        assert no_hooks_left(pipe.transformer) and no_hooks_left(small)
        assert not any(k.startswith("_sr_plugin") for k in vars(pipe))


def test_every_acceleration_works_without_the_switch(pair, family):
    pipe, _ = pair
    baseline = run(pipe, family)
    handle = sr_plugin.accelerate(pipe, **stack(family))
    out = run(pipe, family)
    assert not torch.equal(out, baseline)  # it did skip work
    assert {v for step in handle.trace for v in step.cache.values()} == {"computed", "skipped"}
    handle.remove()
    assert torch.equal(run(pipe, family), baseline)


def test_second_accelerate_is_a_clear_error(pair):
    pipe, _ = pair
    sr_plugin.accelerate(pipe, pab=True)
    with pytest.raises(RuntimeError, match="already"):
        sr_plugin.accelerate(pipe, pab=True)


def test_removal_leaves_no_hook_residue_so_compile_can_follow(pair, family):
    """After a TeaCache/PAB/FBCache handle is removed, the blocks are as before: a later compile accepts them."""
    pipe, small = pair
    sr_plugin.apply(pipe, small, switch_step=3)
    sr_plugin.accelerate(pipe, **stack(family)).remove()
    sr_plugin.accelerate(pipe, fbcache=0.1).remove()
    for model in (pipe.transformer, small):
        assert not any("forward" in vars(m) or "_diffusers_hook" in vars(m) for m in model.modules())
    sr_plugin.accelerate(pipe, compile={"backend": "eager"}).remove()


def test_accelerate_dispatches_on_its_registry_and_names_an_unknown_acceleration(pair):
    from sr_plugin.accel import registered

    pipe, _ = pair
    assert list(registered()) == ["compile", "teacache", "pab", "fbcache"]  # the order they attach in
    before = dict(vars(pipe))
    with pytest.raises(TypeError, match="unknown acceleration\\(s\\) magcache; known: compile, teacache, pab, fbcache"):
        sr_plugin.accelerate(pipe, magcache=0.1)
    assert dict(vars(pipe)) == before
