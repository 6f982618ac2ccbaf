"""The acceleration matrix on the tiny pipelines (CPU): {baseline, SR, TeaCache, PAB, FBCache, compile,
SR+each, SR+all}, each against the unpatched pipeline (see `sr_plugin.lab.bench` for the method)."""

from __future__ import annotations

import pytest
from bench_helpers import measure

from sr_plugin.lab.bench import CONFIGS, configure, skipped_fraction
from sr_plugin.lab.tiny import FAMILIES


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_matrix(benchmark, family, config):
    benchmark.group = f"matrix-{family}"
    pipe, sr, accel = configure(family, config)
    measure(benchmark, pipe, family)
    benchmark.extra_info["teacache_skipped"] = skipped_fraction(accel)
    benchmark.extra_info["switch_step"] = sr.switch_step if sr is not None else None
