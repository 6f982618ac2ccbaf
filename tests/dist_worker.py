"""One rank of the 2-process context-parallel tests, launched by test_distributed.py (or alone, world size 1).

    python dist_worker.py SCENARIO OUT_DIR      (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment)

Writes OUT_DIR/rank<R>.pt with the output latents, the trace, the cache decisions and the rank-local metric.
"""

from __future__ import annotations

import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from pipeline_helpers import LINEAR, MIX, CallLog, run  # noqa: E402

import sr_plugin  # noqa: E402
import sr_plugin.switch.routing  # noqa: E402
from sr_plugin import TeaCacheConfig  # noqa: E402
from sr_plugin.lab.tiny import tiny_pair  # noqa: E402

#: Every collective in these tests gives up after this long instead of hanging.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


def main(scenario: str, out_dir: str) -> None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    parallel = world > 1
    if parallel:
        # diffusers picks the device as rank % torch.accelerator.device_count(), which is 0 on a CPU-only
        # machine: the test harness (not the library) says there is one device.
        torch.accelerator.device_count = lambda: 1
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    torch.manual_seed(0)
    family = "cogvideox" if scenario.startswith("cog") else "wan"
    pipe, small = tiny_pair(family)
    if parallel and family == "wan":
        from diffusers import ContextParallelConfig

        pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    if parallel and family == "cogvideox":
        from para_attn.context_parallel import init_context_parallel_mesh
        from para_attn.context_parallel.diffusers_adapters import parallelize_pipe

        parallelize_pipe(pipe, mesh=init_context_parallel_mesh("cpu"))

    local_d: list[float] = []
    original = sr_plugin.switch.routing.relative_change

    def observed(x0, prev):  # records this rank's own view of the metric (perturbed on rank 1 if asked)
        d = original(x0, prev)
        if scenario.endswith("perturbed") and rank == 1:
            d = d * (1.0 + 0.5 * len(local_d))  # growing: locally, s stays negative and the switch waits
        local_d.append(float(d))
        return d

    sr_plugin.switch.routing.relative_change = observed
    #: A sandwich whose first hand-off is adaptive: every rank must cross both boundaries at the same step.
    schedule = "large:delta,small:8,large" if "sandwich" in scenario else None
    handle = sr_plugin.apply(pipe, small, schedule=schedule)
    tail = CallLog(
        large=(pipe.transformer.blocks if family == "wan" else pipe.transformer.transformer_blocks)[1],
        small=(small.blocks if family == "wan" else small.transformer_blocks)[1],
    )
    accel = None
    if "teacache" in scenario:
        accel = sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(MIX[family], LINEAR))
    if "fbcache" in scenario:
        # Between the two ranks' local views of the first comparison (0.0965 and 0.0932 measured on their
        # shards): a rank deciding alone would disagree with the other.
        accel = sr_plugin.accelerate(pipe, fbcache=0.095)
    out = run(pipe, family)
    torch.save(
        {
            "out": out,
            "switch_step": handle.switch_step,
            "trace": [r.as_dict() for r in handle.trace],
            "accel": [r.as_dict() for r in accel.trace] if accel else None,
            "tail_calls": tail.calls,
            "local_d": local_d,
            "segments": [tuple(x) for x in handle.segments],
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    if parallel:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
