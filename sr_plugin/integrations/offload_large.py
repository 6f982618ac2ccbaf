"""`offload_large=True`: the large transformer's weights leave the GPU while the small model runs.

Moving Wan 14B's 28.6 GB to the host took 19.8 s on an H200 (a fifth of a whole SR run), so nothing here
blocks the denoising loop: at the switch the copies are queued on a side stream into pinned host buffers
(allocated once, at `apply`, or at the first switch if the model was not on the GPU yet), after the large
model's last kernels, and run while the small model computes; each GPU tensor is released to the allocator
only once its copy is done (`record_stream`). The next call brings the weights back on the same side stream
as soon as it starts (before it reads its execution device), so the copy overlaps the text encoder, and the
first large step waits on the GPU, not on the host. Within a call whose schedule brings the large model back
(large - small - large), the copies back are queued a few small steps before its return (`Router.PREFETCH_STEPS`)
and the device waits for them (an event) only at the return.

A no-op for a model that is not on a CUDA device, and under `enable_model_cpu_offload` (whose sequence
already takes the large model off the GPU when the small one runs).
"""

from __future__ import annotations

from typing import Any

import torch


class LargeOffloader:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.offloaded = False
        self._host: dict[str, torch.Tensor] = {}
        self._device: torch.device | None = None
        self._stream = None
        #: Recorded after the copies `prefetch` queued; None when none is in flight.
        self._event: Any = None
        self.prepare()

    def _tensors(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.model.named_parameters()) + [(f"buffer:{n}", b) for n, b in self.model.named_buffers()]

    def prepare(self) -> bool:
        """Pinned host buffers and a side stream, once; False where there is nothing to offload."""
        if self._device is not None:
            return True
        tensors = self._tensors()
        if not tensors or tensors[0][1].device.type != "cuda":
            return False
        self._device = tensors[0][1].device
        self._stream = torch.cuda.Stream(self._device)
        self._host = {name: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for name, t in tensors}
        return True

    def offload(self) -> None:
        """Queue the device-to-host copies behind the work already queued; return at once."""
        if self.offloaded or not self.prepare():
            return
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for name, tensor in self._tensors():
                gpu = tensor.data
                host = self._host[name]
                host.copy_(gpu, non_blocking=True)
                gpu.record_stream(stream)  # the allocator may reuse it only after this copy
                tensor.data = host
        self.offloaded = True

    def prefetch(self) -> None:
        """Queue the host-to-device copies on the side stream and return at once; `wait` makes the device wait
        for them before the large model's next kernels."""
        if not self.offloaded or self._event is not None:
            return
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(self._device))  # new memory may have had earlier tenants
        with torch.no_grad(), torch.cuda.stream(stream):
            for name, tensor in self._tensors():
                gpu = torch.empty(tensor.shape, dtype=tensor.dtype, device=self._device)
                gpu.copy_(self._host[name], non_blocking=True)
                tensor.data = gpu
            self._event = torch.cuda.Event()
            self._event.record(stream)

    def wait(self) -> None:
        """The current stream waits (on the device, not the host) for the copies `prefetch` queued."""
        if self._event is None:
            return
        torch.cuda.current_stream(self._device).wait_event(self._event)
        self._event = None
        self.offloaded = False

    def restore(self) -> None:
        """Back before the large model's next step: the copies queued now unless `prefetch` did already, and the
        current stream waits for them on the GPU, not the host."""
        self.prefetch()
        self.wait()

    def release(self) -> None:
        """Back on the GPU for good, pinned buffers freed (on `remove`)."""
        self.restore()
        if self._stream is not None:
            self._stream.synchronize()
        self._host = {}
        self._device = self._stream = None
