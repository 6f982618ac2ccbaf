"""The switch under context parallelism: 2 CPU processes (gloo) against one process, launched from pytest.

Wan runs diffusers' own context parallelism (Ulysses, degree 2), CogVideoX para-attn's. Every collective has
a 60 s timeout (dist_worker.py) and every process a hard limit here, so a disagreement fails, never hangs.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import pytest
import torch

from sr_plugin.switch.policy import DEFAULT_DELTA, AdaptiveBounds, AdaptiveDecider

WORKER = pathlib.Path(__file__).parents[1] / "dist_worker.py"
PROCESS_LIMIT_S = 240


def launch(scenario: str, out_dir: pathlib.Path, world: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), scenario, str(out_dir)],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=PROCESS_LIMIT_S)[0])
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]


def run_scenario(scenario: str, tmp_path: pathlib.Path) -> tuple[dict, list[dict]]:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = launch(scenario, tmp_path / "one", 1)[0]
    return single, launch(scenario, tmp_path / "two", 2)


@pytest.mark.parametrize("scenario", ["wan", "cog", "wan-sandwich"])
def test_two_ranks_match_one_process(tmp_path, scenario):
    single, ranks = run_scenario(scenario, tmp_path)
    assert single["switch_step"] is not None
    if scenario.endswith("sandwich"):  # large, small from the adaptive hand-off, large again from step 8
        assert [s[0] for s in single["segments"]] == ["large", "small", "large"] and single["segments"][-1][1] == 8
    for r in ranks:
        assert r["switch_step"] == single["switch_step"] and r["segments"] == single["segments"]
        assert [x["model"] for x in r["trace"]] == [x["model"] for x in single["trace"]]
        assert torch.allclose(r["out"], single["out"], atol=1e-5, rtol=1e-5), (r["out"] - single["out"]).abs().max()
    assert torch.equal(ranks[0]["out"], ranks[1]["out"])


def test_a_rank_with_another_view_of_the_metric_still_switches_with_the_others(tmp_path):
    (tmp_path / "two").mkdir()
    ranks = launch("wan-perturbed", tmp_path / "two", 2)
    assert ranks[0]["switch_step"] == ranks[1]["switch_step"] is not None  # and both finished
    assert ranks[0]["trace"] == ranks[1]["trace"]

    def local_switch(d: list[float]) -> int | None:  # what rank 1 would have decided on its own
        decider = AdaptiveDecider(AdaptiveBounds.resolve(DEFAULT_DELTA, None, None, 10))
        values = [None, *d]
        for j in range(10):
            if decider.decide(j) is not None:
                return j
            decider.observe(j, values[j] if j < len(values) else None)
        return None

    assert local_switch(ranks[1]["local_d"]) != ranks[0]["switch_step"]  # the perturbation mattered


@pytest.mark.parametrize("scenario", ["wan-teacache", "wan-fbcache", "cog-teacache"])
def test_caches_decide_the_same_on_every_rank(tmp_path, scenario):
    single, ranks = run_scenario(scenario, tmp_path)
    assert ranks[0]["tail_calls"] == ranks[1]["tail_calls"] == single["tail_calls"]
    assert ranks[0]["accel"] == ranks[1]["accel"]
    if "teacache" in scenario:
        assert ranks[0]["accel"] == single["accel"]
        assert any("skipped" in step["cache"].values() for step in single["accel"])
    else:
        n_calls = 20 if scenario.startswith("wan") else 10
        assert 0 < len(single["tail_calls"]) < n_calls  # First Block Cache skipped some tail passes
    assert torch.allclose(ranks[0]["out"], single["out"], atol=1e-5, rtol=1e-5)
