"""CogVideoX-5b -> 2b with para-attn's context parallelism on N GPUs (diffusers has no plan for CogVideoX):

    torchrun --nproc_per_node=2 examples/cogvideox_context_parallel.py "a panda playing guitar in a forest"

Every rank calls `sr_plugin.apply` after `parallelize_pipe`: the small transformer is parallelized on the same
mesh. 5b has 48 heads and 2b 30: Ulysses degrees 2, 3 or 6.
"""

import sys

import torch
import torch.distributed as dist
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel
from diffusers.utils import export_to_video
from para_attn.context_parallel import init_context_parallel_mesh
from para_attn.context_parallel.diffusers_adapters import parallelize_pipe

import sr_plugin

dist.init_process_group("nccl")
rank = dist.get_rank()
torch.cuda.set_device(rank)

pipe = CogVideoXPipeline.from_pretrained("THUDM/CogVideoX-5b", torch_dtype=torch.bfloat16).to("cuda")
small = CogVideoXTransformer3DModel.from_pretrained(
    "THUDM/CogVideoX-2b", subfolder="transformer", torch_dtype=torch.float16
)  # 2b was trained in fp16
parallelize_pipe(pipe, mesh=init_context_parallel_mesh(pipe.device.type))

handle = sr_plugin.apply(pipe, small, delta=0.01)  # the published 2b latent scale and schedule by default
video = pipe(prompt=sys.argv[1], num_inference_steps=50, generator=torch.Generator("cuda").manual_seed(0)).frames[0]
if rank == 0:
    export_to_video(video, "cogvideox_sr.mp4", fps=8)
    print("switch step:", handle.switch_step)
dist.destroy_process_group()
