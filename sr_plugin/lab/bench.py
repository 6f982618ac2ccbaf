"""The CPU benchmark matrix on the tiny pipelines, shared by `sr-plugin bench` and benchmarks/test_matrix.py.

Each configuration is timed against a fresh unpatched pipeline, interleaved round by round: the figure is
the median over rounds of (configuration time / unpatched time) of the same round, so a slow spell of a
shared machine hits both alike. Random weights: TeaCache's decisions mean nothing beyond the fraction of
block passes they skip, which is reported beside the time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..accel import PABConfig, TeaCacheConfig, accelerate
from ..adapters import family as registered_family
from ..pipeline.seeded import run_seeded
from ..switch.api import apply
from .bench_configs import ACCELERATION_NAMES, BENCH_STEPS, CONFIGS  # noqa: E402,F401 (re-exported)
from .family_tools import tools_for
from .tiny import TINY_CALL, tiny_families, tiny_pair

#: Fixed switch step of the SR rows, so that every SR row switches at the same place.
SWITCH_STEP = 3


def teacache(family: str) -> TeaCacheConfig:
    """TeaCache with the identity polynomial and the family's tiny threshold (about half the calls skipped on
    the tiny models' random weights; `FamilyTools.tiny_teacache_threshold`)."""
    registered_family(family)  # a clear error for an unknown family
    return TeaCacheConfig(tools_for(family).tiny_teacache_threshold, "identity")


#: PAB reusing every other self- and cross-attention call over the whole schedule.
PAB = PABConfig(2, 2, (0, 1000))
FBCACHE = 0.1

ACCELERATIONS: dict[str, Callable[[str], dict[str, Any]]] = {
    "teacache": lambda f: {"teacache": teacache(f)},
    "pab": lambda f: {"pab": PAB},
    "fbcache": lambda f: {"fbcache": FBCACHE},
    "compile": lambda f: {"compile": True},
    "all": lambda f: {"teacache": teacache(f), "pab": PAB, "compile": True},  # FBCache excludes TeaCache
}
assert tuple(ACCELERATIONS) == ACCELERATION_NAMES, "bench_configs.ACCELERATION_NAMES must list ACCELERATIONS"


def call(pipe: Any, family: str, steps: int = BENCH_STEPS) -> Any:
    return run_seeded(pipe, "a red fox runs across a snowy field", 0, num_inference_steps=steps, **TINY_CALL[family])


def configure(family: str, config: str) -> tuple[Any, Any, Any]:
    """A fresh tiny pipeline set up as ``config``: returns (pipe, sr_handle or None, accel_handle or None)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown configuration {config!r}; choose from {', '.join(CONFIGS)}")
    pipe, small = tiny_pair(family)
    sr = apply(pipe, small, switch_step=SWITCH_STEP) if config.startswith("sr") else None
    name = config.removeprefix("sr+") if config.startswith("sr+") else config
    accel = accelerate(pipe, **ACCELERATIONS[name](family)) if name in ACCELERATIONS else None
    return pipe, sr, accel


def skipped_fraction(accel: Any) -> float | None:
    decisions = [v for step in (accel.trace if accel is not None else []) for v in step.cache.values()]
    return decisions.count("skipped") / len(decisions) if decisions else None


def interleaved(
    pipe: Any, family: str, steps: int, rounds: int, timer: Callable[[Callable[[], Any]], Any] | None = None
) -> dict[str, float]:
    """Time ``pipe`` against a fresh unpatched pipeline, one round of each in turn (two warm-up rounds).
    ``timer`` (pytest-benchmark's pedantic) may time the configuration; the reference is timed here."""
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

    for _ in range(2):
        call(pipe, family, steps)
        call(reference, family, steps)
    if timer is not None:
        timer(run_config, run_reference)
    else:
        for _ in range(rounds):
            run_reference()
            run_config()
    return {
        "median_s": statistics.median(times),
        "reference_median_s": statistics.median(ref_times),
        "paired_ratio": statistics.median(t / r for t, r in zip(times, ref_times)),
    }


#: Measured on the 2-core CI machine: the whole default matrix (11 configurations, 10 rounds, BENCH_STEPS
#: steps) takes about 3 minutes per family; the estimate scales from there.
MINUTES_PER_DEFAULT_FAMILY = 3.0


def estimated_minutes(families: int, configs: int, steps: int, rounds: int) -> float:
    """How long `run_matrix` should take on a 2-core CPU (printed before it starts)."""
    return MINUTES_PER_DEFAULT_FAMILY * families * configs / len(CONFIGS) * (rounds + 2) / 12 * steps / BENCH_STEPS


def about_minutes(minutes: float) -> str:
    """ "under a minute", "about 1 minute", "about 4 minutes"."""
    if minutes < 0.75:
        return "under a minute"
    return f"about {minutes:.0f} minute{'' if round(minutes) == 1 else 's'}"


def run_matrix(
    families: list[str] | None = None,
    configs: list[str] | None = None,
    steps: int = BENCH_STEPS,
    rounds: int = 10,
    out: Callable[[str], Any] = print,
) -> list[dict[str, Any]]:
    """Run the matrix and print one row per configuration as it finishes; returns the rows."""
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a small shared CPU, thread scheduling noise swamps the differences
    try:
        known = tiny_families()
        unknown = [f for f in families or () if f not in known]
        if unknown:
            raise ValueError(
                f"unknown family {unknown[0]!r} for the tiny benchmark; families with a tiny pipeline: "
                f"{', '.join(known)}"
            )
        chosen = families or list(known)
        minutes = estimated_minutes(len(chosen), len(configs or CONFIGS), steps, rounds)
        out(
            f"sr-plugin bench: {len(chosen)} famil{'y' if len(chosen) == 1 else 'ies'} x "
            f"{len(configs or CONFIGS)} configurations x ({rounds} + 2 warm-up) paired rounds of {steps} steps: "
            f"{about_minutes(minutes)} on a 2-core CPU"
        )
        out(f"{'family':<10} {'configuration':<14} {'median ms':>10} {'unpatched ms':>13} {'speed-up':>9}  notes")
        for family in chosen:
            for config in configs or CONFIGS:
                pipe, sr, accel = configure(family, config)
                figures = interleaved(pipe, family, steps, rounds)
                row = {
                    "family": family,
                    "config": config,
                    **figures,
                    "speedup": 1 / figures["paired_ratio"],
                    "switch_step": sr.switch_step if sr else None,
                    "teacache_skipped": skipped_fraction(accel),
                }
                rows.append(row)
                notes = "".join(
                    [
                        f"switch at {row['switch_step']}  " if sr else "",
                        f"TeaCache skipped {row['teacache_skipped']:.0%}"
                        if row["teacache_skipped"] is not None
                        else "",
                    ]
                )
                out(
                    f"{family:<10} {config:<14} {figures['median_s'] * 1e3:>10.1f} "
                    f"{figures['reference_median_s'] * 1e3:>13.1f} {row['speedup']:>8.2f}x  {notes}"
                )
    finally:
        torch.set_num_threads(threads)
    return rows
