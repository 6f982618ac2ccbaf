"""Pilot (issue 18): a resized CogVideoX small model, its per-call cost against the large one, and its training.

    python train/pilot_small_size.py 2x4 4000            # layers x heads, steps; writes train/runs/cogvideox-small-pilot
    python train/pilot_small_eval.py --checkpoints train/runs/cogvideox-small-pilot/checkpoints --ks 0,20,25,30  # small only (k=0) and SR at fixed k on held-out pairs

Measured 2026-12-02 (2 threads, batch-2 call at the task's latent shape): large 8x4 8.0 ms; small 2x2 1.5 ms
(5.6x cheaper), 4x2 2.8 ms (2.9x: fails the 3x rule), 2x4 2.4 ms (3.3x). The 2x4 from scratch, 4,000 steps
(about 4 minutes): loss 0.31 against the shipped 2x2's 0.42; on the first 32 held-out pairs small only 40.6%
of prompts (81% of attributes), SR with CogVideoX's large at k=20 / 25 / 30 / 40: 50.0 / 53.1 / 53.1 / 90.6%,
below the shipped 2x2 on the same pairs (k=30: 62.5%, k=40: 96.9%). Not part of the shipped recipe.
"""
import sys, time, torch, argparse, pathlib, shutil
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sr_plugin.lab import trained
L, H = map(int, sys.argv[1].split("x")); steps = int(sys.argv[2]); fam = sys.argv[3] if len(sys.argv) > 3 else "cogvideox"
trained.SIZES[fam]["small"] = (L, H)
import train_family
# call cost: one transformer call, large vs this small, batch 2 (CFG), the task's latent shape
torch.set_num_threads(2)
for role in ("large", "small"):
    m = trained.transformer(fam, role).eval()
    x = torch.randn(2, 3, 8, 8, 8) if fam == "cogvideox" else torch.randn(2, 8, 3, 8, 8)
    text = torch.randn(2, 16, 32)
    kw = dict(hidden_states=x, encoder_hidden_states=text, timestep=torch.tensor([500, 500]), return_dict=False)
    if fam == "cogvideox" and role == "large":
        pipe = trained.build_pipeline(fam, role, m, trained.vae(fam), trained.text_encoder(fam))
        kw["image_rotary_emb"] = pipe._prepare_rotary_positional_embeddings(32, 32, 3, "cpu")
    with torch.no_grad():
        for _ in range(3): m(**kw)
        t = time.perf_counter()
        for _ in range(20): m(**kw)
    print(role, (time.perf_counter() - t) / 20 * 1000, "ms per call", sum(p.numel() for p in m.parameters()), flush=True)
work = pathlib.Path("train/runs/cogvideox-small-pilot")
(work / "checkpoints").mkdir(parents=True, exist_ok=True)
if not (work / "vae").exists():  # the encode stage's data and the VAE of the CogVideoX run folder
    shutil.copytree("train/runs/cogvideox/vae", work / "vae")
    (work / "data.pt").symlink_to(pathlib.Path("train/runs/cogvideox/data.pt").resolve())
args = argparse.Namespace(family=fam, seed=0, checkpoints=pathlib.Path("train/runs/cogvideox-small-pilot/checkpoints"), resume=True, from_shipped=False,
                          steps=steps, batch=64, lr=1e-3, ema=0.998, save_every=500, schedule="constant", cooldown_from=0,
                          eval_every=0, eval_pairs=24, eval_steps=20, threads=2)
train_family.stage_transformer(args, pathlib.Path("train/runs/cogvideox-small-pilot"), "small")
