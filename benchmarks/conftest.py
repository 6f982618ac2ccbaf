"""Benchmarks on the tiny pipelines (CPU).

Interleaved measurement: before every timed round of a configuration, the untimed ``setup`` of
pytest-benchmark runs the unpatched reference pipeline once and times it by hand. The ratio printed at
the end is the median over rounds of (configuration time / reference time) of the same round, so a slow
spell of a shared machine hits both alike.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from sr_plugin.tiny import TINY_CALL, tiny_pair

BENCH_STEPS = 10
ROUNDS = 25

# One thread: on a small shared CPU, thread scheduling noise otherwise swamps the differences measured here.
torch.set_num_threads(1)


def call(pipe: Any, family: str, steps: int = BENCH_STEPS) -> Any:
    return pipe(**TINY_CALL[family], prompt="a red fox runs across a snowy field", num_inference_steps=steps,
                output_type="latent", generator=torch.Generator().manual_seed(0)).frames


def measure(benchmark: Any, pipe: Any, family: str, steps: int = BENCH_STEPS) -> None:
    """Time ``pipe`` with a fresh unpatched reference pipeline interleaved round by round."""
    reference, _ = tiny_pair(family)
    ref_times: list[float] = []
    times: list[float] = []

    def run_reference() -> None:
        start = time.perf_counter()
        call(reference, family, steps)
        ref_times.append(time.perf_counter() - start)

    def run_config() -> None:
        start = time.perf_counter()
        call(pipe, family, steps)
        times.append(time.perf_counter() - start)

    for _ in range(2):  # warm-up both
        call(pipe, family, steps)
        call(reference, family, steps)
    benchmark.pedantic(run_config, setup=run_reference, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["reference_median_s"] = statistics.median(ref_times)
    benchmark.extra_info["paired_ratio"] = statistics.median(t / r for t, r in zip(times, ref_times))


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    terminalreporter.section("time relative to the unpatched pipeline (median of paired per-round ratios)")
    for b in sorted(session.benchmarks, key=lambda b: (b.group or "", b.name)):
        ratio = b.extra_info.get("paired_ratio")
        if ratio is None:
            continue
        notes = "".join(f"  {k}={v:.2f}" if isinstance(v, float) else f"  {k}={v}" for k, v in b.extra_info.items()
                        if k not in ("reference_median_s", "paired_ratio"))
        terminalreporter.write_line(
            f"{b.group or '':<18} {b.name:<40} median {b.stats.median * 1e3:8.2f} ms "
            f"(unpatched {b.extra_info['reference_median_s'] * 1e3:8.2f} ms)  {ratio:6.3f}x  "
            f"speed-up {1 / ratio:5.2f}x{notes}"
        )
