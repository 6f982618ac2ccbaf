"""The names of the CPU benchmark matrix (`sr_plugin.lab.bench`), kept light: the CLI's argument parser reads them
without importing torch."""

from __future__ import annotations

BENCH_STEPS = 10
#: The accelerations of the matrix, each alone and with the switch; "all" stacks TeaCache, PAB and compile.
ACCELERATION_NAMES: tuple[str, ...] = ("teacache", "pab", "fbcache", "compile", "all")
CONFIGS: list[str] = (
    ["baseline", "sr"] + [a for a in ACCELERATION_NAMES if a != "all"] + [f"sr+{a}" for a in ACCELERATION_NAMES]
)
