"""The acceleration matrix on the tiny pipelines (CPU): each configuration against the unpatched pipeline,
interleaved round by round (see conftest). Random weights: TeaCache's and FBCache's decisions mean nothing
here beyond the fraction of block passes they skip, which is reported next to the time."""

from __future__ import annotations

import pytest
from conftest import BENCH_STEPS, measure

import sr_plugin
from sr_plugin import PABConfig, TeaCacheConfig
from sr_plugin.tiny import FAMILIES, tiny_pair

#: Fixed switch step for the SR rows (of BENCH_STEPS), so that every row switches at the same place.
SWITCH_STEP = 3
#: TeaCache with the identity polynomial and thresholds that skip part of the calls on the tiny models.
TEACACHE = {"wan": TeaCacheConfig(1.5, {"large": (1.0, 0.0), "small": (1.0, 0.0)}),
            "cogvideox": TeaCacheConfig(1.2, {"large": (1.0, 0.0), "small": (1.0, 0.0)})}
#: PAB reusing every other self- and cross-attention call over the whole schedule.
PAB = PABConfig(2, 2, (0, 1000))
FBCACHE = 0.1

ACCELERATIONS = {
    "teacache": lambda f: {"teacache": TEACACHE[f]},
    "pab": lambda f: {"pab": PAB},
    "fbcache": lambda f: {"fbcache": FBCACHE},
    "compile": lambda f: {"compile": True},
    "all": lambda f: {"teacache": TEACACHE[f], "pab": PAB, "compile": True},
}
CONFIGS = ["baseline", "sr"] + [a for a in ACCELERATIONS if a != "all"] + [f"sr+{a}" for a in ACCELERATIONS]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_matrix(benchmark, family, config):
    benchmark.group = f"matrix-{family}"
    pipe, small = tiny_pair(family)
    sr = None
    if config.startswith("sr"):
        sr = sr_plugin.apply(pipe, small, switch_step=SWITCH_STEP)
    name = config.removeprefix("sr+") if config.startswith("sr+") else config
    accel = sr_plugin.accelerate(pipe, **ACCELERATIONS[name](family)) if name in ACCELERATIONS else None
    measure(benchmark, pipe, family)
    if accel is not None and accel.trace:
        decisions = [v for step in accel.trace for v in step["cache"].values()]
        benchmark.extra_info["teacache_skipped"] = decisions.count("skipped") / len(decisions)
    if sr is not None:
        benchmark.extra_info["switch_step"] = sr.switch_step
