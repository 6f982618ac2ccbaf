"""Wan2.1 14B -> 1.3B with diffusers' context parallelism (Ulysses) on N GPUs:

    torchrun --nproc_per_node=2 examples/wan_context_parallel.py "a corgi surfing a wave at sunset"

Every rank calls `sr_plugin.apply`: the small transformer is parallelized on the large one's mesh, and the
switch is decided once for all ranks. Ulysses needs the head counts divisible by the degree: 14B has 40 heads,
1.3B has 12, so use 2 or 4 (or ring attention: ContextParallelConfig(ring_degree=N)).
"""

import sys

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.utils import export_to_video

import sr_plugin

dist.init_process_group("nccl")
rank = dist.get_rank()
torch.cuda.set_device(rank)

pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-14B-Diffusers", torch_dtype=torch.bfloat16)
pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=3.0)
pipe.to("cuda")
small = WanTransformer3DModel.from_pretrained(
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", subfolder="transformer", torch_dtype=torch.bfloat16
)
pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=dist.get_world_size()))

handle = sr_plugin.apply(pipe, small, delta=0.01)
video = pipe(prompt=sys.argv[1], num_inference_steps=50, generator=torch.Generator("cuda").manual_seed(0)).frames[0]
if rank == 0:
    export_to_video(video, "wan_sr.mp4", fps=16)
    print("switch step:", handle.switch_step)
dist.destroy_process_group()
