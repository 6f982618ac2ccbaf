"""pytest-benchmark's summary in paired ratios; the helpers the benchmarks import live in bench_helpers.py."""

from __future__ import annotations

from typing import Any

import bench_helpers  # noqa: F401  (one thread for every benchmark, set on import)


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    terminalreporter.section("time relative to the unpatched pipeline (median of paired per-round ratios)")
    for b in sorted(session.benchmarks, key=lambda b: (b.group or "", b.name)):
        ratio = b.extra_info.get("paired_ratio")
        if ratio is None:
            continue
        notes = "".join(
            f"  {k}={v:.2f}" if isinstance(v, float) else f"  {k}={v}"
            for k, v in b.extra_info.items()
            if k not in ("reference_median_s", "paired_ratio", "median_s") and v is not None
        )
        terminalreporter.write_line(
            f"{b.group or '':<18} {b.name:<40} median {b.stats.median * 1e3:8.2f} ms "
            f"(unpatched {b.extra_info['reference_median_s'] * 1e3:8.2f} ms)  {ratio:6.3f}x  "
            f"speed-up {1 / ratio:5.2f}x{notes}"
        )
