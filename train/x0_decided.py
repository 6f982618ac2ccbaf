"""How much of the composition the large model has decided by step k: its x0 estimate at step k, decoded and
scored, on the first held-out pairs (large only, 50 steps): where a large-first switch loses the prompts.

    python train/x0_decided.py cogvideox 32     # about 1 minute; also: wan

Measured 2026-12-02 on the shipped families, 32 pairs (prompts right at k = 10 / 20 / 25 / 30 / 40; large only):
CogVideoX 10 / 29 / 32 / 32 / 31 (31); Wan's 8-block large model 6 / 13 / 20 / 23 / 28 (29), its 16-block one
(shipped since) 5 / 13 / 18 / 21 / 27 (28).
"""

import sys

import recipe
import torch

from sr_plugin.adapters import adapter_for
from sr_plugin.lab import evaluate, task, trained
from sr_plugin.lab.quality import generate_video

fam = sys.argv[1]
pairs = int(sys.argv[2])
ks = [10, 20, 25, 30, 40]
torch.set_num_threads(2)
pipe, small, extra = trained.load(fam)
adapter = adapter_for(pipe)
orig = pipe.scheduler.step
state = {"j": 0, "x0": {}}


def step(model_output, t, sample, *a, **kw):
    j = state["j"]
    if j in ks:
        state["x0"][j] = adapter.denoised(pipe.scheduler, j, float(t), sample, model_output).detach().clone()
    state["j"] += 1
    return orig(model_output, t, sample, *a, **kw)


pipe.scheduler.step = step
objective = recipe.Objective(fam, "large", pipe)  # the family's latent layout and scale, written once


def score(x0, prompt):
    return recipe.decode_and_score(pipe.vae, objective.raw_latents(x0, pipe.vae), [prompt])[1][0]


right = {k: 0 for k in ks}
final = 0
for p, s in task.held_out()[:pairs]:
    state["j"] = 0
    state["x0"] = {}
    v = generate_video(pipe, fam, p, s, 50)[0]
    final += evaluate.score_video(v, p).right
    for k in ks:
        right[k] += score(state["x0"][k], p).right
print(fam, "large only right:", final, "of", pairs, "; x0 estimate right at step k:", right, flush=True)
