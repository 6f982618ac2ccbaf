"""pytest-benchmark helpers on the tiny pipelines (CPU); the matrix and the method live in `sr_plugin.lab.bench`.
(Not in conftest.py: see tests/pipeline_helpers.py.)"""

from __future__ import annotations

from typing import Any

import torch

from sr_plugin.lab.bench import BENCH_STEPS, interleaved

ROUNDS = 25

# One thread: on a small shared CPU, thread scheduling noise otherwise swamps the differences measured here.
torch.set_num_threads(1)


def measure(benchmark: Any, pipe: Any, family: str, steps: int = BENCH_STEPS) -> None:
    """Time ``pipe`` with pytest-benchmark, a fresh unpatched pipeline interleaved round by round."""

    def timer(run_config, run_reference):
        benchmark.pedantic(run_config, setup=run_reference, rounds=ROUNDS, iterations=1)

    benchmark.extra_info.update(interleaved(pipe, family, steps, ROUNDS, timer))
