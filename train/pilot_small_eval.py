"""Pilot (issue 18): the resized small model of train/pilot_small_size.py under SR at fixed switch steps.

    python train/pilot_small_eval.py 2x4 32 0,20,25,30,40   # the pilot (k=0: small only)
    python train/pilot_small_eval.py 2x2 32 30,40           # the shipped small model on the same pairs
"""
import sys, argparse, pathlib, torch
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sr_plugin.lab import trained, task, evaluate
from sr_plugin.lab.quality import generate_video
import sr_plugin
L, H = map(int, sys.argv[1].split("x")); pairs = int(sys.argv[2]); ks = [int(k) for k in sys.argv[3].split(",")]
trained.SIZES["small"] = (L, H)
import train_family
torch.set_num_threads(2)
pipe, shipped_small, extra = trained.load("cogvideox")
small = shipped_small if (L, H) == (2, 2) else train_family.ema_model(argparse.Namespace(checkpoints=pathlib.Path("train/runs/cogvideox-small-pilot/checkpoints"), family="cogvideox"), pathlib.Path("train/runs/cogvideox-small-pilot"), "small")
for k in ks:
    scores = []
    for p, s in task.held_out()[:pairs]:
        h = sr_plugin.apply(pipe, small, switch_step=k, **extra)
        try:
            scores.append(evaluate.score_video(generate_video(pipe, "cogvideox", p, s, 50)[0], p))
        finally:
            h.remove()
    print(f"{L}x{H} k={k}", evaluate.summarize(scores), flush=True)
