"""The plugin's own per-step work next to a transformer call: the unpatched pipeline against SR that never
switches (fixed switch_step=N: no host read; adaptive with the switch out of reach: one read per step)."""

from __future__ import annotations

import pytest
from bench_helpers import measure

import sr_plugin
from sr_plugin.lab.bench import BENCH_STEPS
from sr_plugin.lab.tiny import FAMILIES, tiny_pair

CONFIGS = {
    "baseline": None,
    "fixed-never-switches": {"switch_step": BENCH_STEPS},
    "adaptive-never-switches": {"delta": 1e-9, "min_switch_step": BENCH_STEPS, "max_switch_step": BENCH_STEPS},
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("family", FAMILIES)
def test_overhead(benchmark, family, config):
    benchmark.group = f"overhead-{family}"
    pipe, small = tiny_pair(family)
    if CONFIGS[config] is not None:
        sr_plugin.apply(pipe, small, **CONFIGS[config])
    measure(benchmark, pipe, family)
