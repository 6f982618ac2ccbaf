"""`offload_large=True`: the large transformer's weights leave the GPU while the small model runs, and come back
block by block, each block's weights on the device before its forward starts.

Moving Wan 14B's 28.6 GB to the host took 19.8 s on an H200 (a fifth of a whole SR run), so nothing here blocks
the denoising loop. When a small segment starts, the copies to pinned host buffers (allocated once) are queued on
a side stream behind the large model's last kernels and run while the small model computes; each GPU tensor goes
back to the allocator once its copy is done (`record_stream`). The way back is queued group by group, in the order
the forward uses them: what is outside the blocks (embeddings, norms, the output projection) first, then each
block, each group with an event of its own. A forward pre-hook on the model and on each block makes the current
stream wait (on the device, not the host) for that group's event only, so the first block computes while the
later blocks are still coming in. The way back is queued at the start of the next call (before the pipeline reads
its execution device, overlapping the text encoder) or, within a call whose schedule brings the large model back,
a few small steps before its return (`Router.PREFETCH_STEPS`).

The copies go through a `Transfer` (CUDA streams and events); a test gives a fake one whose copies land only when
waited for, so a block that ran on weights still in flight would show. A no-op for a model that is not on a CUDA
device (with the real transfer), and under `enable_model_cpu_offload` (whose sequence already takes the large
model off the GPU when the small one runs).
"""

from __future__ import annotations

from typing import Any

import torch


class CudaTransfer:
    """Copies between a CUDA device and pinned host memory on a side stream, ordered by events."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def host_buffer(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)

    def to_host(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Queue ``device -> host`` for each (device tensor, host buffer), behind the work already queued."""
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(self.stream):
            for gpu, host in pairs:
                host.copy_(gpu, non_blocking=True)
                gpu.record_stream(self.stream)  # the allocator may reuse it only after this copy

    def begin_to_device(self) -> None:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # new memory may have had earlier tenants

    def to_device(self, hosts: list[torch.Tensor]) -> tuple[list[torch.Tensor], Any]:
        """Queue ``host -> device`` for one group; returns the device tensors and the group's event."""
        with torch.no_grad(), torch.cuda.stream(self.stream):
            out = []
            for host in hosts:
                gpu = torch.empty(host.shape, dtype=host.dtype, device=self.device)
                gpu.copy_(host, non_blocking=True)
                out.append(gpu)
            event = torch.cuda.Event()
            event.record(self.stream)
        return out, event

    def wait(self, event: Any) -> None:
        torch.cuda.current_stream(self.device).wait_event(event)

    def synchronize(self) -> None:
        self.stream.synchronize()


class LargeOffloader:
    """The large model's weights off the device and back, in groups (outside the blocks, then block by block)."""

    def __init__(self, model: torch.nn.Module, blocks: Any = (), transfer: Any = None) -> None:
        self.model = model
        self.offloaded = False
        self._blocks = list(blocks)
        self._transfer = transfer
        self._groups: list[tuple[torch.nn.Module, list[tuple[str, torch.Tensor]]]] = []
        self._host: dict[str, torch.Tensor] = {}
        #: Per group (by its module), the event its copies back record; popped once waited for.
        self._events: dict[int, Any] = {}
        self._hooks: list[Any] = []
        self.prepare()

    @property
    def in_flight(self) -> bool:
        return bool(self._events)

    def _tensors(self, module: torch.nn.Module, prefix: str) -> list[tuple[str, torch.Tensor]]:
        return [(f"{prefix}{n}", t) for n, t in module.named_parameters()] + [
            (f"{prefix}buffer:{n}", b) for n, b in module.named_buffers()
        ]

    def _group(self) -> None:
        """The model's tensors in the order its forward needs them: outside the blocks first, then each block."""
        in_blocks = {id(t) for block in self._blocks for _, t in self._tensors(block, "")}
        rest = [(n, t) for n, t in self._tensors(self.model, "") if id(t) not in in_blocks]
        self._groups = [(self.model, rest)] + [
            (block, self._tensors(block, f"block{i}.")) for i, block in enumerate(self._blocks)
        ]

    def prepare(self) -> bool:
        """The transfer, the groups and the host buffers, once; False where there is nothing to offload."""
        if self._groups:
            return True
        tensors = self._tensors(self.model, "")
        if not tensors:
            return False
        if self._transfer is None:
            if tensors[0][1].device.type != "cuda":
                return False
            self._transfer = CudaTransfer(tensors[0][1].device)
        self._group()
        self._host = {name: self._transfer.host_buffer(t) for _, group in self._groups for name, t in group}
        return True

    def offload(self) -> None:
        """Queue the device-to-host copies behind the work already queued; return at once."""
        if self.offloaded or not self.prepare():
            return
        self.wait()  # a group whose forward did not run (its blocks skipped by a cache) is still in flight
        pairs = [(t.data, self._host[name]) for _, group in self._groups for name, t in group]
        self._transfer.to_host(pairs)
        for _, group in self._groups:
            for name, t in group:
                t.data = self._host[name]
        self.offloaded = True

    def prefetch(self) -> None:
        """Queue the host-to-device copies, group by group, and return at once: each group's forward waits for its
        own copies (the hooks), not for the whole model's."""
        if not self.offloaded or self.in_flight:
            return
        self._install_hooks()
        self._transfer.begin_to_device()
        for module, group in self._groups:
            device_tensors, event = self._transfer.to_device([self._host[name] for name, _ in group])
            for (_, t), gpu in zip(group, device_tensors):
                t.data = gpu
            self._events[id(module)] = event
        self.offloaded = False

    def _install_hooks(self) -> None:
        if self._hooks:
            return
        for module, _ in self._groups:
            self._hooks.append(module.register_forward_pre_hook(self._wait_for(id(module))))

    def _wait_for(self, key: int) -> Any:
        def hook(module: torch.nn.Module, args: Any) -> None:
            event = self._events.pop(key, None)
            if event is not None:
                self._transfer.wait(event)

        return hook

    def wait(self) -> None:
        """The device waits for every group still in flight (a model about to run outside its own forward)."""
        for key in list(self._events):
            self._transfer.wait(self._events.pop(key))

    def restore(self) -> None:
        """Back before the large model's next step: the copies queued now unless `prefetch` did already; each
        group's forward waits for its own."""
        self.prefetch()

    def release(self) -> None:
        """Back on the device for good, hooks gone, host buffers freed (on `remove`)."""
        self.prefetch()
        self.wait()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._transfer is not None and self._groups:
            self._transfer.synchronize()
        self._host, self._groups = {}, []
