"""Real-size stacked benchmark on one GPU (and, with --tiny, the same run end to end on a CPU).

    python benchmarks/gpu_bench.py --json out.json          # full-size models, random bf16 weights, on the GPU
    python benchmarks/gpu_bench.py --tiny --json out.json   # the built-in tiny pair, CPU
    python benchmarks/gpu_bench.py --large PATH --small PATH --family wan   # real checkpoints

Builds the transformers from their published configs (docs/method.md, "Published sizes") directly on the GPU
in bf16 (no downloads), runs the real pipeline denoising loop with prompt embeddings passed in (no text
encoder, VAE decode skipped: output_type="latent"), and reports for each configuration: wall time, speed-up
over large-only, the ideal SR speed-up N / (k + (N - k) / r) from the per-step times it measured, measured /
ideal, peak GPU memory, and TeaCache's computed versus skipped block passes. With random weights TeaCache's
decisions mean nothing, so its threshold is calibrated to skip a known fraction of the calls
(--teacache-skip), and that fraction is reported beside the speed-up.

The rest of the stack: "sr+flash" and "sr+cudnn" set diffusers' attention backend on the large model
(the small one uses it through the switch; the rows record the small model's backends); "wan22-both" runs
Wan2.2 T2V A14B's shape (the 14B-sized high-noise expert plus a second 14B-sized low-noise expert,
boundary_ratio 0.875) and "wan22-sr" the high-noise expert alone with the 1.3B rendering from the boundary at
the latest (speed-up and ideal against "wan22-both"; peak memory shows the expert saved); "float8" and
"sr+float8" quantize copies of both transformers with torchao's float8 dynamic config and compile their blocks
(the path torchao documents; int8 weight-only with compile on the CPU smoke run), the compile warm-up reported
apart, a float8 row slower than bf16 flagged. The schedule rows ("small-first", "sandwich", eager and compiled)
run the small model first, or in the middle, against the ideal of their step counts. PAB rows report the bytes
PAB holds per model.

Each configuration is isolated (a failure is recorded, the run goes on), the JSON is rewritten after each
one, and configurations that would start after --budget-s seconds are skipped (recorded as such). Before the rows
it prints how long they should take. ``--resume OUT.json`` keeps every row an earlier call finished (the
large-only baselines among them) and runs the rest, rows with no figure yet first: two 10-minute calls cover
every row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

import sr_plugin
from sr_plugin import PABConfig, TeaCacheConfig
from sr_plugin.accel.teacache import IDENTITY_COEFFICIENTS, TeaCacheState, resolve_coefficients
from sr_plugin.adapters import adapter_for, registered_families
from sr_plugin.adapters import family as registered_family
from sr_plugin.lab.family_tools import tools_for
from sr_plugin.pipeline.costs import ideal_speedup, one_switch_roles, speedup
from sr_plugin.pipeline.seeded import run_seeded
from sr_plugin.switch.schedule import roles_of

#: The families and their published full-size configs come from the registry
#: (`FamilyTools.published_sizes`, `bare_pipeline`, `latent_shape`, `bench_steps`).
FAMILY_KEYS = tuple(a.key for a in registered_families() if tools_for(a.key).published_sizes)


def published(family: str) -> dict[str, Any]:
    return tools_for(family).published_sizes


@dataclass(frozen=True)
class Row:
    """One configuration of the bench, as data: the switch it applies, the accelerations stacked on it, the rest
    of the stack it needs, and the row its speed-up is measured against."""

    name: str
    #: None: no switch; "k": a fixed switch at --switch-step; "never": applied with the schedule "large" (it never
    #: hands over); "small-first" / "sandwich": those schedules; "adaptive": SRDiffusion's rule.
    switch: str | None = None
    teacache: bool = False
    pab: bool = False
    compile: bool = False
    #: apply(offload_large=True), timed over two calls (the weights come back at the second call's start).
    offload: bool = False
    #: The rest of the stack: "backend" (an attention backend on the large model, mirrored to the small one:
    #: (GPU backend, CPU stand-in) in `backend`), "wan22" (Wan2.2 A14B's two experts; `expert`: the low-noise one
    #: loaded), "float8" (quantized copies of both transformers, compiled; the bf16 ones stay as they are).
    stack: str | None = None
    backend: tuple[str, str] | None = None
    expert: bool = False
    #: The row whose wall time its speed-up is over.
    baseline: str = "large"
    #: Families it is left out on at real sizes: "sr-never" on Wan would be a whole extra large-only run (its
    #: overhead is measured on CogVideoX and per step on Wan's latents); offloading matters for Wan 14B's 28.6 GB.
    skip: frozenset[str] = frozenset()
    #: The one family it exists for (Wan2.2's rows), or None.
    only: str | None = None


ROWS: tuple[Row, ...] = (
    Row("large"),
    Row("sr", switch="k"),
    Row("compile", compile=True),
    Row("sr+compile", switch="k", compile=True, baseline="compile"),
    Row("small-first", switch="small-first"),
    Row("sandwich", switch="sandwich"),
    Row("small-first+compile", switch="small-first", compile=True, baseline="compile"),
    Row("sandwich+compile", switch="sandwich", compile=True, baseline="compile"),
    Row("teacache", teacache=True),
    Row("sr+teacache", switch="k", teacache=True),
    Row("pab", pab=True),
    Row("sr+all", switch="k", teacache=True, pab=True, compile=True, baseline="compile"),
    Row("sr-never", switch="never", skip=frozenset({"wan"})),
    Row("sr+offload", switch="k", offload=True, skip=frozenset({"cogvideox"})),
    Row("sr+flash", switch="k", stack="backend", backend=("flash", "_native_math")),
    Row("sr+cudnn", switch="k", stack="backend", backend=("_native_cudnn", "native")),
    Row("wan22-both", stack="wan22", expert=True, only="wan"),
    Row("wan22-sr", switch="adaptive", stack="wan22", baseline="wan22-both", only="wan"),
    Row("float8", stack="float8", compile=True),
    Row("sr+float8", switch="k", stack="float8", compile=True, baseline="float8"),
)
ROW = {row.name: row for row in ROWS}
CONFIGS = [row.name for row in ROWS]
#: Cooperation schedules of the schedule rows, from the switch step k and the step count N: the small model first
#: for k steps; large - small - large with the small model from k to N - k (for N = 6, k = 2: two steps each; at
#: least one small step).
SCHEDULES = {
    "small-first": lambda k, n: f"small:{k},large",
    "sandwich": lambda k, n: f"large:{k},small:{max(k + 1, n - k)},large",
}


def schedule_of(row: Row, k: int, steps: int) -> str | None:
    return SCHEDULES[row.switch](k, steps) if row.switch in SCHEDULES else None


#: Wan2.2 T2V A14B's boundary: steps with t >= 0.875 * 1000 go to the high-noise expert.
WAN22_BOUNDARY = 0.875
#: The order of the runs, most important first, in case the time budget runs out.
#: The baselines first, then the rows with no figure on a GPU yet (float8 with compile, the block-wise offload,
#: the schedules), then the rest.
PRIORITY = [
    ("wan", "large"),
    ("wan", "sr"),
    ("cogvideox", "large"),
    ("cogvideox", "sr"),
    ("wan", "compile"),
    ("cogvideox", "compile"),
    ("wan", "float8"),
    ("wan", "sr+float8"),
    ("cogvideox", "float8"),
    ("cogvideox", "sr+float8"),
    ("wan", "sr+offload"),
    ("wan", "small-first"),
    ("wan", "sandwich"),
    ("cogvideox", "small-first"),
    ("cogvideox", "sandwich"),
    ("wan", "sr+compile"),
    ("cogvideox", "sr+compile"),
    ("wan", "small-first+compile"),
    ("wan", "sandwich+compile"),
    ("cogvideox", "small-first+compile"),
    ("cogvideox", "sandwich+compile"),
    ("cogvideox", "sr-never"),
    ("wan", "sr+offload"),
    ("wan", "teacache"),
    ("wan", "sr+teacache"),
    ("cogvideox", "teacache"),
    ("cogvideox", "sr+teacache"),
    ("cogvideox", "pab"),
    ("cogvideox", "sr+all"),
    ("wan", "sr-never"),
    ("cogvideox", "sr+offload"),
    ("wan", "pab"),
    ("wan", "sr+all"),
    ("wan", "wan22-both"),
    ("wan", "wan22-sr"),
    ("wan", "sr+flash"),
    ("wan", "sr+cudnn"),
    ("cogvideox", "sr+flash"),
    ("cogvideox", "sr+cudnn"),
]


def log(*args: Any) -> None:
    print(*args, flush=True)


# ----------------------------------------------------------------------------------------------- building
def build_full(family: str, device: torch.device) -> tuple[Any, Any, Any]:
    """(pipe, small, prompt embeddings) with full-size random bf16 transformers built on ``device``."""
    adapter, tools = registered_family(family), tools_for(family)
    spec = tools.published_sizes
    cls = adapter.transformer_class()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            large = cls(**spec["large"]).eval().requires_grad_(False)
            small = cls(**spec["small"]).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(default)
    pipe = tools.bare_pipeline(large, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, small, _embeddings(spec["text"], torch.bfloat16, device)


def _embeddings(shape: tuple[int, int], dtype: torch.dtype, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator("cpu").manual_seed(0)
    return tuple(torch.randn(1, *shape, generator=g).to(device=device, dtype=dtype) for _ in range(2))


def build_tiny(family: str) -> tuple[Any, Any, Any]:
    from sr_plugin.lab.tiny import tiny_pair

    pipe, small = tiny_pair(family)
    text = tools_for(family).published_sizes["text"][0]  # the published text length, at the tiny width
    width = pipe.text_encoder.config.d_model
    return pipe, small, _embeddings((text, width), torch.float32, "cpu")


def build_loaded(family: str, large: str, small: str, device: torch.device) -> tuple[Any, Any, Any]:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(large, dtype=torch.bfloat16)
    small_model = (
        adapter_for(pipe).transformer_class().from_pretrained(small, subfolder="transformer", dtype=torch.bfloat16)
    )
    pipe.to(device)
    small_model.to(device).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe, small_model, _embeddings(published(family)["text"], torch.bfloat16, device)


# ----------------------------------------------------------------------------------------------- running
class Run:
    """One timed pipeline call: wall time, per-step times, peak memory, memory at the end of the loop."""

    def __init__(self, env: Env, steps: int, reset_peak_at: int | None = None, probe: Any = None) -> None:
        self.env, self.steps, self.reset_peak_at = env, steps, reset_peak_at
        #: Called at every step end; returns a dict of numbers, whose maxima over the call are recorded.
        self.probe = probe

    def __call__(self, pipe: Any) -> dict[str, Any]:
        env = self.env
        marks: list[float] = []
        rendering_peak: list[int] = []
        end_alloc: list[int] = []

        probed: dict[str, float] = {}

        def on_step(p: Any, i: int, t: Any, kwargs: dict) -> dict:
            env.sync()
            marks.append(time.perf_counter())
            if self.probe is not None:
                for key, value in self.probe().items():
                    probed[key] = max(probed.get(key, 0), value)
            if env.cuda and self.reset_peak_at is not None and i == self.reset_peak_at:
                torch.cuda.reset_peak_memory_stats()
            if env.cuda and i == self.steps - 1:
                end_alloc.append(torch.cuda.memory_allocated())
                rendering_peak.append(torch.cuda.max_memory_allocated())
            return {}

        if env.cuda:
            torch.cuda.reset_peak_memory_stats()
        env.sync()
        start = time.perf_counter()
        out = run_seeded(
            pipe,
            None,
            0,
            prompt_embeds=env.embeds[0],
            negative_prompt_embeds=env.embeds[1],
            num_inference_steps=self.steps,
            callback_on_step_end=on_step,
            **env.call,
        )
        env.sync()
        wall = time.perf_counter() - start
        step_times = [b - a for a, b in zip([start] + marks[:-1], marks)]
        record = {"wall_s": wall, "step_s": step_times, **({"probe": probed} if probed else {})}
        if env.cuda:
            record["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if self.reset_peak_at is not None:
                record[f"peak_after_step_{self.reset_peak_at}_gib"] = (
                    rendering_peak[0] / 2**30 if rendering_peak else None
                )
            record["allocated_at_loop_end_gib"] = end_alloc[0] / 2**30 if end_alloc else None
        record["_out"] = out
        return record


class Env:
    def __init__(self, pipe: Any, small: Any, embeds: Any, family: str, tiny: bool, device: torch.device) -> None:
        self.pipe, self.small, self.embeds, self.family, self.tiny = pipe, small, embeds, family, tiny
        self.cuda = device.type == "cuda"
        self.gen_device = "cuda" if self.cuda else "cpu"
        from sr_plugin.lab.tiny import TINY_CALL

        self.call = dict(TINY_CALL[family]) if tiny else dict(published(family)["call"])
        self.adapter = adapter_for(pipe)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def steady(step_s: list[float], start: int, stop: int | None = None) -> float | None:
    """Median step time over steps [start, stop): the first step of a model carries one-time costs."""
    values = step_s[start:stop]
    return statistics.median(values) if values else None


def threshold_for_skip(
    env: Env, model: Any, role: str, steps: int, target_skip: float, first_step: int = 0
) -> tuple[float, float]:
    """The threshold that makes TeaCache skip the fraction of calls closest to ``target_skip`` for the steps
    ``model`` runs: replays the published rule on the modulated inputs of the schedule (no block runs)."""
    scheduler = env.pipe.scheduler
    scheduler.set_timesteps(steps, device=env.embeds[0].device)
    config = TeaCacheConfig(0.0)
    coefficients = resolve_coefficients(config, env.adapter, model, role) if not env.tiny else IDENTITY_COEFFICIENTS
    with torch.no_grad():
        inputs = [
            env.adapter.teacache_modulated_input(model, t.expand(1).to(env.embeds[0].device), env.embeds[0], False)
            for t in scheduler.timesteps[first_step:]
        ]

    def skip_fraction(threshold: float) -> float:
        state, skipped = TeaCacheState(), 0
        for j, x in enumerate(inputs, start=first_step):
            skipped += not state.decide(x, j, steps, threshold, coefficients, 1)
            state.residuals = {"hidden_states": torch.zeros(1)}
        return skipped / len(inputs)

    best = (0.0, 0.0)
    for exponent in range(-160, 121):  # thresholds 1e-4 .. 1e3, geometric
        threshold = 10 ** (exponent / 40)
        fraction = skip_fraction(threshold)
        if abs(fraction - target_skip) < abs(best[1] - target_skip) - 1e-9:
            best = (threshold, fraction)
    return best


def teacache_config(env: Env, steps: int, k: int | None, target_skip: float, calibration: dict) -> TeaCacheConfig:
    thresholds: dict[str, float] = {}
    thresholds["large"], calibration["large_predicted_skip"] = threshold_for_skip(
        env, env.pipe.transformer, "large", steps, target_skip
    )
    if k is not None:
        thresholds["small"], calibration["small_predicted_skip"] = threshold_for_skip(
            env, env.small, "small", steps, target_skip, first_step=k
        )
    calibration.update({f"{r}_threshold": t for r, t in thresholds.items()})
    coefficients = "identity" if env.tiny else None
    return TeaCacheConfig(thresholds, coefficients)


def block_passes(accel: Any, env: Env) -> dict[str, int]:
    """Computed and skipped block passes from TeaCache's trace (one call = all of a model's blocks)."""
    layers = {"large": env.pipe.transformer.config.num_layers, "small": env.small.config.num_layers}
    counts = {"computed": 0, "skipped": 0}
    for step in accel.trace:
        for what in step.cache.values():
            counts[what] += layers[step.model]
    return counts


def record_error(rec: dict[str, Any], err: Exception) -> None:
    rec["error"] = f"{type(err).__name__}: {err}"
    rec["traceback"] = traceback.format_exc()[-3000:]


def undo_all(undo: list[Any], rec: dict[str, Any]) -> None:
    """Run every undo, last first, even after a failure (recorded, the first one kept)."""
    for step in reversed(undo):
        try:
            step()
        except Exception as err:
            rec.setdefault("error", f"undo failed: {err}")


def run_stack_config(env: Env, row: Row, steps: int, k: int) -> dict[str, Any]:
    """The rest of the stack: attention backends, Wan2.2 A14B's experts, torchao float8."""
    pipe, small = env.pipe, env.small
    rec: dict[str, Any] = {"config": row.name}
    undo: list[Any] = []
    try:
        if row.stack == "backend":
            assert row.backend is not None
            backend = row.backend[1 if env.tiny else 0]
            rec["backend"] = backend
            pipe.transformer.set_attention_backend(backend)
            undo.append(pipe.transformer.reset_attention_backend)
            handle = sr_plugin.apply(pipe, small, switch_step=k)
            undo.append(handle.remove)
            rec.update(Run(env, steps)(pipe))
            rec["small_backends"] = sorted(
                {
                    str(getattr(m.processor, "_attention_backend", None))
                    for m in small.modules()
                    if hasattr(m, "processor")
                }
            )
            rec["switch_step"] = handle.switch_step
        elif row.stack == "wan22":
            expert = wan22_low_noise_expert(env)
            from diffusers import WanPipeline

            two = WanPipeline(
                tokenizer=None,
                text_encoder=None,
                vae=None,
                transformer=pipe.transformer,
                transformer_2=expert if row.expert else None,
                scheduler=pipe.scheduler,
                boundary_ratio=WAN22_BOUNDARY,
            )
            two.set_progress_bar_config(disable=True)
            if (
                row.switch is not None
            ):  # the high-noise expert sketches; the 1.3B renders from the boundary at the latest
                handle = sr_plugin.apply(two, small)
                undo.append(handle.remove)
            rec.update(Run(env, steps)(two))
            if row.switch is not None:
                rec["switch_step"], rec["switch_reason"] = handle.switch_step, handle.switch.reason
        elif row.stack == "float8":
            qpipe, qsmall = quantized_pair(env, rec)
            if row.switch is not None:
                handle = sr_plugin.apply(qpipe, qsmall, switch_step=k)
                undo.append(handle.remove)
            accel = sr_plugin.accelerate(qpipe, compile={"backend": "eager"} if env.tiny else True)
            undo.append(accel.remove)
            t0 = time.perf_counter()
            Run(env, steps if row.switch is not None else 2)(qpipe)  # compiles every block the timed call runs
            rec["compile_warmup_s"] = time.perf_counter() - t0
            rec.update(Run(env, steps)(qpipe))
            if row.switch is not None:
                rec["switch_step"] = handle.switch_step
    except Exception as err:  # recorded; the run goes on with the next configuration
        record_error(rec, err)
    finally:
        undo_all(undo, rec)
        if env.cuda:
            torch.cuda.empty_cache()
    return rec


def wan22_low_noise_expert(env: Env) -> Any:
    """A second transformer of the large model's size (Wan2.2 A14B's experts are each Wan2.1-14B-sized), built
    once and kept for the two Wan2.2 rows."""
    if getattr(env, "low_expert", None) is None:
        config = dict(env.pipe.transformer.config)
        cls = type(env.pipe.transformer)
        default = torch.get_default_dtype()
        torch.set_default_dtype(env.pipe.transformer.dtype)
        try:
            with torch.device(env.pipe.transformer.device):
                torch.manual_seed(1)
                env.low_expert = cls.from_config(config).eval().requires_grad_(False)
        finally:
            torch.set_default_dtype(default)
    return env.low_expert


def quantized_pair(env: Env, rec: dict[str, Any]) -> tuple[Any, Any]:
    """A pipeline on quantized copies of both transformers, built once and kept: float8 dynamic activations and
    weights on a GPU, int8 weight-only on the CPU (torchao's float8 kernels need CUDA)."""
    if getattr(env, "quantized", None) is None:
        import copy

        from torchao.quantization import quantize_

        if env.cuda:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

            config, name = Float8DynamicActivationFloat8WeightConfig(), "float8 dynamic (torchao), compiled"
        else:
            from torchao.quantization import Int8WeightOnlyConfig

            config, name = Int8WeightOnlyConfig(), "int8 weight-only (torchao; float8 needs CUDA), compiled"
        env.low_expert = None  # frees the Wan2.2 expert's memory
        t0 = time.perf_counter()
        large, small = copy.deepcopy(env.pipe.transformer), copy.deepcopy(env.small)
        for model in (large, small):
            quantize_(model, config)
        qpipe = type(env.pipe)(**{**env.pipe.components, "transformer": large})
        qpipe.set_progress_bar_config(disable=True)
        env.quantized = (name, qpipe, small, time.perf_counter() - t0)
    name, qpipe, small, seconds = env.quantized
    rec.update(quantization=name, quantize_s=seconds)
    return qpipe, small


def run_config(env: Env, row: Row, steps: int, k: int, args: argparse.Namespace, results: dict) -> dict[str, Any]:
    # Each row compiles afresh: the quantized rows' blocks share code with the bf16 ones, and their graphs would
    # count towards the same recompile limit (fullgraph: a hard failure once reached).
    torch.compiler.reset()
    if row.stack is not None:
        return run_stack_config(env, row, steps, k)
    pipe, small = env.pipe, env.small
    handles: list[Any] = []
    rec: dict[str, Any] = {"config": row.name}
    schedule = schedule_of(row, k, steps)
    sr = row.switch is not None
    compile_opts = {"backend": "eager"} if env.tiny else True
    # Self-attention only: Wan's cross-attention (512 text tokens) is cheap, and caching its output per module
    # and CFG branch would cost as much memory as the self-attention's (40 x 2 x 335 MB at 81 x 480 x 832).
    # The whole schedule: at 6-10 steps the default range (100, 800) would leave PAB almost nothing to reuse.
    pab = PABConfig(2, None, (0, 1000))
    calibration: dict[str, Any] = {}
    try:
        if sr:
            # sr-never: the switch applied, its plan the large model for every step
            kwargs: dict[str, Any] = {"schedule": "large"} if row.switch == "never" else {"switch_step": k}
            if schedule is not None:
                kwargs = {"schedule": schedule}
                rec["schedule"] = schedule
            if row.offload:
                t0 = time.perf_counter()
                kwargs["offload_large"] = True
            handles.append(sr_plugin.apply(pipe, small, **kwargs))
            if row.offload:
                rec["apply_s"] = time.perf_counter() - t0
        accel_kwargs: dict[str, Any] = {}
        if row.teacache:
            accel_kwargs["teacache"] = teacache_config(env, steps, k if sr else None, args.teacache_skip, calibration)
        if row.pab:
            accel_kwargs["pab"] = pab
        if row.compile:
            accel_kwargs["compile"] = compile_opts
        accel = sr_plugin.accelerate(pipe, **accel_kwargs) if accel_kwargs else None
        if accel is not None:
            handles.append(accel)
        if "compile" in accel_kwargs:  # warm-up: compiles the blocks of every model this run uses
            t0 = time.perf_counter()
            # with the switch: k large steps, then one small step; a schedule: the whole call (every segment)
            Run(env, steps if schedule is not None else k + 1 if sr else 2)(pipe)
            rec["compile_warmup_s"] = time.perf_counter() - t0
        reset_at = k + 1 if sr and schedule is None and k + 1 < steps else None
        probe = None
        if "pab" in accel_kwargs:  # what PAB holds per model (its largest over the call)
            from sr_plugin.accel.pab import pab_cache_bytes

            def probe() -> dict[str, float]:
                return {
                    "pab_large_gib": pab_cache_bytes(pipe.transformer) / 2**30,
                    "pab_small_gib": pab_cache_bytes(small) / 2**30,
                }

        run = Run(env, steps, reset_peak_at=reset_at, probe=probe)
        first = run(pipe)
        if row.offload:
            rec["first_call_wall_s"] = first["wall_s"]
            rec["large_on_host_after_call"] = next(pipe.transformer.parameters()).device.type == "cpu"
            first = run(pipe)  # steady state: this call also brings the weights back at its start
            ref = results.get("sr", {}).get("_out")
            rec["output_equals_sr"] = None if ref is None else bool(torch.equal(first["_out"], ref))
        rec.update(first)
        if calibration:
            rec["teacache_calibration"] = calibration
        if accel is not None and accel.trace and "teacache" in accel_kwargs:
            passes = block_passes(accel, env)
            rec["block_passes"] = passes
            rec["teacache_skipped_fraction"] = passes["skipped"] / max(1, passes["computed"] + passes["skipped"])
            calls = [w for s in accel.trace for w in s.cache.values()]
            rec["teacache_skipped_calls"] = calls.count("skipped") / len(calls)
        if sr:
            rec["switch_step"] = handles[0].switch_step
            if schedule is not None:
                rec["segments"] = [tuple(x) for x in handles[0].segments]
    except Exception as err:  # recorded; the run goes on with the next configuration
        record_error(rec, err)
    finally:
        undo_all([h.remove for h in handles], rec)
        if env.cuda:
            torch.cuda.empty_cache()
    return rec


def summarize(family_results: dict[str, dict], steps: int, k: int) -> dict[str, Any]:
    """Speed-ups over large-only, and the ideal SR speed-up from the per-step times measured."""
    large, compiled = family_results.get("large", {}), family_results.get("compile", {})
    summary: dict[str, Any] = {}
    k_fixed = k

    def ideal(large_rec: dict, sr_rec: dict) -> tuple[float | None, float | None]:
        k = sr_rec.get("switch_step") or k_fixed
        t_large = steady(large_rec.get("step_s", []), 1)
        t_small = steady(sr_rec.get("step_s", []), k + 1)
        if not t_large or not t_small:
            return None, None
        r = t_large / t_small
        return r, ideal_speedup(one_switch_roles(k, steps), r)

    for name, rec in family_results.items():
        if "wall_s" not in rec or name not in ROW:
            continue
        over = ROW[name].baseline
        if over == "compile" and "wall_s" not in compiled:  # no compiled baseline measured: large only
            over = "large"
        base = family_results.get(over, {})
        if "wall_s" in base:
            rec["speedup"] = base["wall_s"] / rec["wall_s"]
            rec["speedup_over"] = over
    # the switch's rows with one hand-over: against the steady step times of their baseline and their small steps
    one_switch = [
        (row.name, row.baseline)
        for row in ROWS
        if row.switch in ("k", "adaptive") and not (row.teacache or row.pab or row.offload or row.stack == "backend")
    ]
    for sr_name, base_name in one_switch:
        sr_rec, base = family_results.get(sr_name, {}), family_results.get(base_name, {})
        r, bound = ideal(base, sr_rec)
        if bound and "speedup" in sr_rec:
            sr_rec.update(r=r, ideal_speedup=bound, measured_over_ideal=sr_rec["speedup"] / bound)
            summary[sr_name] = {
                "r": r,
                "ideal": bound,
                "measured": sr_rec["speedup"],
                "measured_over_ideal": sr_rec["speedup"] / bound,
            }
    for name, rec in family_results.items():  # schedules: each step at its model's steady step time
        if rec.get("schedule") is None or "speedup" not in rec:
            continue
        compiled_row = ROW[name].compile
        base = family_results.get("compile" if compiled_row else "large", {})
        small_rec = family_results.get("sr+compile" if compiled_row else "sr", {})
        t_large = steady(base.get("step_s", []), 1)
        t_small = steady(small_rec.get("step_s", []), k + 1)
        if not t_large or not t_small:
            continue
        bound = speedup(roles_of(rec["schedule"], steps), {"large": t_large, "small": t_small})
        rec.update(ideal_speedup=bound, measured_over_ideal=rec["speedup"] / bound)
        summary[name] = {
            "schedule": rec["schedule"],
            "ideal": bound,
            "measured": rec["speedup"],
            "measured_over_ideal": rec["speedup"] / bound,
        }
    for name in (row.name for row in ROWS if row.stack == "float8"):
        rec = family_results.get(name, {})
        bf16 = family_results.get("sr+compile" if ROW[name].switch else "compile", {})
        if "wall_s" in rec and "wall_s" in bf16:
            rec["vs_bf16_compiled"] = bf16["wall_s"] / rec["wall_s"]
            if rec["vs_bf16_compiled"] < 1:
                rec["note"] = f"slower than bf16 compiled ({rec['vs_bf16_compiled']:.2f}x)"
            summary[name] = {
                "vs_bf16_compiled": rec["vs_bf16_compiled"],
                "compile_warmup_s": rec.get("compile_warmup_s"),
            }
    never = family_results.get("sr-never", {})
    if "wall_s" in never and "wall_s" in large:
        summary["never_switching_overhead"] = never["wall_s"] / large["wall_s"] - 1
    return summary


def plugin_step_cost(env: Env, repeats: int = 50) -> dict[str, float]:
    """The plugin's own per-step work on this family's real latent shape: x0, the metric, one host read."""
    from sr_plugin.switch.metric import relative_change

    pipe = env.pipe
    scheduler = pipe.scheduler
    scheduler.set_timesteps(10, device=env.embeds[0].device)
    shape = tools_for(env.family).latent_shape(pipe.transformer, env.call)
    device = env.embeds[0].device
    x, v, prev = (torch.randn(shape, device=device) for _ in range(3))
    t = float(scheduler.timesteps[3])
    for _ in range(3):
        float(relative_change(env.adapter.denoised(scheduler, 3, t, x, v), prev))
    env.sync()
    start = time.perf_counter()
    for _ in range(repeats):
        float(relative_change(env.adapter.denoised(scheduler, 3, t, x, v), prev))
    env.sync()
    return {"latent_shape": list(shape), "per_step_ms": (time.perf_counter() - start) / repeats * 1e3}


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'family':<10} {'config':<20} {'wall s':>8} {'speed-up':>9} {'ideal':>7} {'meas/ideal':>10} "
        f"{'peak GiB':>9} {'TeaCache skipped':>17}  notes"
    ]
    for family, fam in results["families"].items():
        for name, rec in fam["configs"].items():
            if "wall_s" not in rec:
                lines.append(f"{family:<10} {name:<20} {'-':>8}  {rec.get('error', rec.get('skipped', ''))[:90]}")
                continue
            notes = []
            if rec.get("switch_step") is not None:
                notes.append(f"switch {rec['switch_step']}")
            if "speedup_over" in rec and rec["speedup_over"] != "large":
                notes.append(f"vs {rec['speedup_over']}")
            if "compile_warmup_s" in rec:
                notes.append(f"warm-up {rec['compile_warmup_s']:.0f} s")
            if rec.get("note"):
                notes.append(rec["note"])
            if rec.get("probe"):
                notes.append(", ".join(f"{k} {v:.2f}" for k, v in rec["probe"].items()))
            if "output_equals_sr" in rec:
                notes.append(
                    f"== sr: {rec['output_equals_sr']}, large on host after call: "
                    f"{rec.get('large_on_host_after_call')}, end alloc {rec.get('allocated_at_loop_end_gib')}"
                )
            fmt = lambda key, spec, rec=rec: format(rec[key], spec) if rec.get(key) is not None else "-"  # noqa: E731
            lines.append(
                f"{family:<10} {name:<20} {rec['wall_s']:>8.2f} {fmt('speedup', '>8.2f')}x "
                f"{fmt('ideal_speedup', '>7.2f')} {fmt('measured_over_ideal', '>10.4f')} "
                f"{fmt('peak_gib', '>9.1f')} {fmt('teacache_skipped_fraction', '>17.2f')}  {'; '.join(notes)}"
            )
    return "\n".join(lines)


def finished_rows(path: str) -> dict[str, dict[str, Any]]:
    """The rows an earlier call's JSON finished (a wall time and no error), by family."""
    with open(path) as f:
        earlier = json.load(f)
    return {
        family: {name: rec for name, rec in fam.get("configs", {}).items() if "wall_s" in rec and "error" not in rec}
        for family, fam in earlier.get("families", {}).items()
    }


#: Seconds a compiled row's warm-up adds on the H200 (7-15 s per model, two models), and a float8 row's
#: quantization of the copies, when no measured figure is at hand.
WARMUP_GUESS_S, QUANTIZE_GUESS_S = 30.0, 60.0


def estimate_s(order: list[tuple[str, str]], results: dict[str, Any], args: argparse.Namespace) -> float:
    """How long the rows should take: each a call or two at its family's large-only (or SR) wall time, plus its
    compile warm-up; large-only's own figure from an earlier call where there is one, else a guess from the
    published per-step times (6.5 s and 1.8 s a large step: reference H200 figures)."""
    total = 0.0
    for family, name in order:
        row = ROW[name]
        configs = results["families"][family]["configs"]
        steps = results["families"][family]["steps"]
        large = configs.get("large", {}).get("wall_s") or steps * (6.5 if family == "wan" else 1.8)
        sr = configs.get("sr", {}).get("wall_s") or large / 2
        wall = sr if row.switch is not None else large
        calls = 2 if row.offload else 1
        total += wall * calls + (WARMUP_GUESS_S if row.compile else 0)
        total += QUANTIZE_GUESS_S if row.stack == "float8" and row.switch is None else 0
    return total * (0.01 if args.tiny else 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny pair on the CPU (a smoke run)")
    parser.add_argument("--families", nargs="+", choices=FAMILY_KEYS, default=list(FAMILY_KEYS))
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=CONFIGS)
    parser.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=None,
        help="steps per family, in --families order (default: each family's bench_steps: 6 for Wan, 10 for CogVideoX)",
    )
    parser.add_argument("--switch-step", type=int, default=2)
    parser.add_argument("--teacache-skip", type=float, default=0.5, help="target fraction of skipped calls")
    parser.add_argument("--budget-s", type=float, default=440, help="start no configuration after this many seconds")
    parser.add_argument("--large", help="a real large pipeline (id or path) instead of random weights")
    parser.add_argument("--small", help="a real small model (its 'transformer' subfolder)")
    parser.add_argument("--json", default="gpu_bench.json")
    parser.add_argument(
        "--resume",
        metavar="JSON",
        default=None,
        help="keep every row this earlier call's JSON finished (its baselines among them) and run the "
        "rest; the merged results go to --json",
    )
    args = parser.parse_args(argv)
    if (args.large is None) != (args.small is None):
        parser.error("give both --large and --small, or neither")
    if args.large and len(args.families) != 1:
        parser.error("with --large/--small, name the one family with --families")
    steps_by_family = dict(zip(args.families, args.steps)) if args.steps else {}
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if not args.tiny and device.type != "cuda":
        parser.error("no GPU here: run with --tiny for the CPU smoke run")
    import diffusers
    import transformers

    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "sr_plugin": sr_plugin.__version__,
        },
        "weights": "tiny, random" if args.tiny else ("loaded" if args.large else "full-size configs, random bf16"),
        "families": {},
    }
    earlier = finished_rows(args.resume) if args.resume else {}
    if args.resume:
        results["resumed_from"] = {"path": args.resume, "rows": sum(len(v) for v in earlier.values())}
    start = time.perf_counter()

    def save() -> None:
        clean = json.loads(json.dumps(results, default=lambda o: None))
        for fam in clean["families"].values():
            for rec in fam["configs"].values():
                rec.pop("_out", None)
        with open(args.json, "w") as f:
            json.dump(clean, f, indent=1)

    envs: dict[str, Env] = {}
    for family in args.families:  # both families stay resident (about 46 GB of bf16 weights on an H200)
        steps = steps_by_family.get(family, tools_for(family).bench_steps)
        fam: dict[str, Any] = {
            "steps": steps,
            "switch_step": args.switch_step,
            "configs": dict(earlier.get(family, {})),
        }
        results["families"][family] = fam
        log(f"== {family}: building ({results['weights']}) ...")
        t0 = time.perf_counter()
        if args.tiny:
            built = build_tiny(family)
        elif args.large:
            built = build_loaded(family, args.large, args.small, device)
        else:
            built = build_full(family, device)
        fam["build_s"] = time.perf_counter() - t0
        env = envs[family] = Env(*built, family, args.tiny, device)
        fam["plugin_step_cost"] = plugin_step_cost(env)
        warm = sr_plugin.apply(env.pipe, env.small, switch_step=1)
        Run(env, 2)(env.pipe)  # eager warm-up of both models (kernels, workspaces)
        warm.remove()
        log(f"   built in {fam['build_s']:.1f} s; plugin per-step work {fam['plugin_step_cost']['per_step_ms']:.3f} ms")
        save()
    # the planned order first, then any other registered family's configurations in the CONFIGS order; rows an
    # earlier call finished are kept as they are
    order = PRIORITY + [(f, c) for f in envs for c in CONFIGS if (f, c) not in PRIORITY]
    order = [
        (f, c)
        for f, c in order
        if f in envs
        and c in args.configs
        and ROW[c].only in (None, f)
        and (args.tiny or f not in ROW[c].skip)
        and "wall_s" not in results["families"][f]["configs"].get(c, {})
    ]
    log(
        f"== {len(order)} rows to run: about {estimate_s(order, results, args) / 60:.1f} minutes "
        f"(budget {args.budget_s / 60:.1f}); kept from an earlier call: "
        f"{sum(len(v) for v in earlier.values())}"
    )
    for family, name in order:
        fam = results["families"][family]
        if time.perf_counter() - start > args.budget_s:
            fam["configs"][name] = {"config": name, "skipped": "time budget"}
            continue
        rec = run_config(envs[family], ROW[name], fam["steps"], args.switch_step, args, fam["configs"])
        fam["configs"][name] = rec
        fam["summary"] = summarize(fam["configs"], fam["steps"], args.switch_step)
        save()
        log(f"   {family:<10} {name:<12} " + (f"{rec['wall_s']:.2f} s" if "wall_s" in rec else rec.get("error", "")))
    results["total_s"] = time.perf_counter() - start
    save()
    log(table(results))
    for family, fam in results["families"].items():
        log(f"{family} summary: {json.dumps(fam.get('summary', {}), default=lambda o: None)}")
    return (
        0 if all("error" not in rec for fam in results["families"].values() for rec in fam["configs"].values()) else 1
    )


if __name__ == "__main__":
    sys.exit(main())
