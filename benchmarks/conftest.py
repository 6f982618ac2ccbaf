"""pytest-benchmark on the tiny pipelines (CPU); the matrix and the method live in `sr_plugin.bench`."""

from __future__ import annotations

from typing import Any

import torch

from sr_plugin.bench import BENCH_STEPS, interleaved

ROUNDS = 25

# One thread: on a small shared CPU, thread scheduling noise otherwise swamps the differences measured here.
torch.set_num_threads(1)


def measure(benchmark: Any, pipe: Any, family: str, steps: int = BENCH_STEPS) -> None:
    """Time ``pipe`` with pytest-benchmark, a fresh unpatched pipeline interleaved round by round."""

    def timer(run_config, run_reference):
        benchmark.pedantic(run_config, setup=run_reference, rounds=ROUNDS, iterations=1)

    benchmark.extra_info.update(interleaved(pipe, family, steps, ROUNDS, timer))


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
                        if k not in ("reference_median_s", "paired_ratio", "median_s") and v is not None)
        terminalreporter.write_line(
            f"{b.group or '':<18} {b.name:<40} median {b.stats.median * 1e3:8.2f} ms "
            f"(unpatched {b.extra_info['reference_median_s'] * 1e3:8.2f} ms)  {ratio:6.3f}x  "
            f"speed-up {1 / ratio:5.2f}x{notes}"
        )
