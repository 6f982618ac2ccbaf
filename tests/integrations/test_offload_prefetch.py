"""offload_large's way back, block by block, checked on CPU with a transfer whose copies land only when the device
waits for them: a block that ran on weights still in flight would compute on NaNs. The order of copies, waits and
forwards, the output against the switch without offloading, and the weights after the call."""

from __future__ import annotations

import pytest
import torch
from pipeline_helpers import CallLog, run

import sr_plugin
from sr_plugin.adapters import adapter_for
from sr_plugin.integrations.offload_large import LargeOffloader


class DeferredTransfer:
    """Stands in for the CUDA side stream: a copy to the device is queued as NaNs and lands at the wait."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.names: dict[int, str] = {}

    def host_buffer(self, tensor):
        return torch.empty_like(tensor)

    def to_host(self, pairs):
        for device, host in pairs:
            host.copy_(device)
        self.log.append("to host")

    def begin_to_device(self):
        self.groups = 0

    def to_device(self, hosts):
        out = [torch.full_like(h, float("nan")) if h.is_floating_point() else torch.zeros_like(h) for h in hosts]
        name = "rest" if self.groups == 0 else f"block {self.groups - 1}"
        self.groups += 1
        self.log.append(f"queued {name}")
        return out, (out, hosts, name)

    def wait(self, event):
        out, hosts, name = event
        for o, h in zip(out, hosts):
            o.copy_(h)
        self.log.append(f"waited {name}")

    def synchronize(self):
        pass


@pytest.mark.parametrize("schedule", ["large:3,small", "large:2,small:8,large", "small:3,large"])
def test_each_block_waits_for_its_own_weights_and_the_output_is_the_switchs(pair, family, schedule):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small, schedule=schedule)
    expected = run(pipe, family)
    handle.remove()
    weights = {n: t.clone() for n, t in pipe.transformer.state_dict().items()}
    with pytest.warns(UserWarning, match="does nothing"):
        handle = sr_plugin.apply(pipe, small, schedule=schedule, offload_large=True)
    blocks = adapter_for(pipe).blocks(pipe.transformer)
    calls = CallLog(**{f"block {i}": b for i, b in enumerate(blocks)})  # forwards and transfers in one log
    handle.router.offloader = LargeOffloader(pipe.transformer, blocks, transfer=DeferredTransfer(calls.calls))
    for call in range(2):  # the second call brings the weights back at its start (if the first left them off)
        calls.calls.clear()
        assert torch.equal(run(pipe, family), expected)  # no block computed on NaNs still in flight
        log = list(calls.calls)
        back = [i for i, e in enumerate(log) if e == "queued rest"]
        if schedule.startswith("small"):  # the large model's segment ends the call: it never leaves
            assert "to host" not in log and not back
            continue
        assert "to host" in log and log.index("to host") > log.index("block 0")  # after the large model ran
        assert back or call == 0  # a call that starts on the large model after one that ended without it
        for start in back:  # after each way back: every block's next forward comes after its own wait
            rest = log[start:]
            for i in range(len(blocks)):
                queued, waited = rest.index(f"queued block {i}"), rest.index(f"waited block {i}")
                first_forward = rest.index(f"block {i}")
                assert queued < waited < first_forward
            # all groups are queued before the first block waits: the later blocks stream in while it computes
            assert rest.index(f"queued block {len(blocks) - 1}") < rest.index("waited block 0")
    calls.close()
    handle.remove()
    assert all(torch.equal(t, weights[n]) for n, t in pipe.transformer.state_dict().items())  # back, and equal
    assert not pipe.transformer._forward_pre_hooks and not any(b._forward_pre_hooks for b in blocks)
