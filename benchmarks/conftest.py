"""Benchmarks on the tiny pipelines (CPU). Each group's "baseline" is the reference for the ratios printed
at the end: ``pytest benchmarks`` (pytest-benchmark) then prints one line per configuration."""

from __future__ import annotations

from typing import Any

import torch

from sr_plugin.tiny import TINY_CALL

BENCH_STEPS = 10
ROUNDS = 20

# One thread: on a small shared CPU, thread scheduling noise otherwise swamps the differences measured here.
torch.set_num_threads(1)


def call(pipe: Any, family: str, steps: int = BENCH_STEPS) -> Any:
    return pipe(**TINY_CALL[family], prompt="a red fox runs across a snowy field", num_inference_steps=steps,
                output_type="latent", generator=torch.Generator().manual_seed(0)).frames


def measure(benchmark: Any, pipe: Any, family: str) -> None:
    benchmark.pedantic(call, args=(pipe, family), rounds=ROUNDS, warmup_rounds=2, iterations=1)


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list[Any]] = {}
    for bench in session.benchmarks:
        groups.setdefault(bench.group or "", []).append(bench)
    terminalreporter.section("time relative to the group's baseline (min: robust to interference; median)")
    for group, benches in sorted(groups.items()):
        base = next((b for b in benches if "baseline" in b.name), None)
        if base is None:
            continue
        for b in benches:
            terminalreporter.write_line(
                f"{group:<24} {b.name:<52} min {b.stats.min * 1e3:8.2f} ms {b.stats.min / base.stats.min:6.3f}x"
                f"   median {b.stats.median * 1e3:8.2f} ms {b.stats.median / base.stats.median:6.3f}x"
            )
