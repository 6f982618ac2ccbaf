"""Every caching acceleration at its "never reuse" setting reproduces the run without it exactly, alone and
with the switch (one test for TeaCache at threshold 0, First Block Cache at threshold 0 and PAB at skip range 1):
what they add around the blocks changes nothing until they skip."""

from __future__ import annotations

import pytest
import torch
from diffusers import FirstBlockCacheConfig
from pipeline_helpers import run
from test_teacache import COEFFS

import sr_plugin
from sr_plugin import PABConfig, TeaCacheConfig


def teacache_settings(family):
    return {"teacache": TeaCacheConfig(0.0, COEFFS[family])}


def teacache_computed_everything(handle, small, switch, pipe, family):
    assert all(set(step.cache.values()) == {"computed"} for step in handle.trace)


def fbcache_mirrored(handle, small, switch, pipe, family):
    """The small model ran its steps with the cache (given to it for the call only, as any diffusers cache is)."""
    if switch is not None:
        seen = []
        run(pipe, family, callback_on_step_end=lambda p, i, t, kw: seen.append(small._cache_config) or kw)
        assert isinstance(seen[-1], FirstBlockCacheConfig) and seen[-1].threshold == 0.0
        assert small._cache_config is None


ACCELERATIONS = {
    # name: (accelerate's keywords for the family, a further check of the run)
    "teacache 0": (teacache_settings, teacache_computed_everything),
    "fbcache 0": (lambda family: {"fbcache": 0.0}, fbcache_mirrored),
    "pab skip range 1": (lambda family: {"pab": PABConfig(1, 1, (0, 1000))}, lambda *args: None),
}


@pytest.mark.parametrize("switch", [None, 4])
@pytest.mark.parametrize("acceleration", list(ACCELERATIONS))
def test_never_reusing_reproduces_the_baseline_exactly(pair, family, switch, acceleration):
    settings, check = ACCELERATIONS[acceleration]
    pipe, small = pair
    if switch is not None:
        sr_plugin.apply(pipe, small, switch_step=switch)
    expected = run(pipe, family)
    handle = sr_plugin.accelerate(pipe, **settings(family))
    assert torch.equal(run(pipe, family), expected)
    check(handle, small, switch, pipe, family)
