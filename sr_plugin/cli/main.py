"""`sr-plugin` / `python -m sr_plugin`: demo, generate, bench."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .. import __version__

#: The trained families shipped in the package (sr_plugin.lab.trained.FAMILY_NAMES, checked by a test), which
#: `demo` and `calibrate-delta` run: written out here so that parsing arguments and --help import neither torch
#: nor diffusers. `generate` and `bench` take any registered family, checked against the registry when they run.
FAMILIES = ("wan", "cogvideox")
#: The families registered when the command line runs (the adapters shipped in the package; checked against the
#: registry by a test): `generate --family` is checked against them at parse time.
REGISTERED_FAMILIES = ("wan", "cogvideox")
#: What the lab extra (pip install 'sr-plugin[lab]') brings, which the commands need and `apply` does not.
LAB_MODULES = ("skimage", "imageio", "imageio_ffmpeg", "matplotlib", "PIL")
#: calibrate-delta fits a small step's time over a large one's from its paired runs (median of the per-run
#: estimates): fewer than this many runs (prompts x settings) and one disturbed run moves the fit. Single paired
#: runs on a shared 2-core VM move by about 10%; with 8 the median holds (docs/results.md, "Speed against quality").
MIN_CALIBRATION_RUNS = 8
#: Log lines of libraries below sr-plugin that say nothing to its users: torchao's CUDA kernels that a CPU
#: build of torch cannot load, and the deprecation notes its import triggers in torch and diffusers.
_QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")


#: The subcommands' parsers (filled by `build_parser`), whose `error` reports a failed parse-time check.
_SUBPARSERS: dict[str, argparse.ArgumentParser] = {}


class _Parser(argparse.ArgumentParser):
    """A bad argument: argparse's short usage line ("usage: sr-plugin generate [options]") and one line naming
    the problem, not the whole usage block."""

    def format_usage(self) -> str:
        return super().format_usage() if self.prog == "sr-plugin" else f"usage: {self.prog} [options]\n"

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.format_usage()}{self.prog}: error: {message} (see {self.prog} --help)\n")


def _checked(kind: type, ok: Any, rule: str) -> Any:
    """An argparse type: ``kind(text)`` that must satisfy ``ok``, else "must be <rule>" (also for text that is
    not a number at all)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'a whole number' if kind is int else 'a number'} "
                                             f"{rule}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return parse


#: The most denoising steps any command takes (the schedules' 1,000 training timesteps).
MAX_STEPS = 1000
_steps = _checked(int, lambda v: 1 <= v <= MAX_STEPS, f"between 1 and {MAX_STEPS}")
_positive_int = _checked(int, lambda v: v >= 1, "at least 1")
_step = _checked(int, lambda v: v >= 0, ">= 0")
_delta = _checked(float, lambda v: 0 < v < 1, "in the open interval (0, 1)")
_threshold = _checked(float, lambda v: v >= 0, ">= 0")
_fraction = _checked(float, lambda v: 0 < v <= 1, "in (0, 1]")
_held_out_count = _checked(int, lambda v: 1 <= v <= 64, "between 1 and 64 (the held-out set)")
_held_out_or_none = _checked(int, lambda v: 0 <= v <= 64, "between 0 and 64 (the held-out set)")


class _DefaultsShown(argparse.HelpFormatter):
    """--help shows each option's default, unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "default" not in text and not any(action.default is v for v in (None, False, argparse.SUPPRESS))):
            text += " (default: %(default)s)"
        return text


def _switch_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--delta", type=_delta, default=None, help="adaptive switching threshold in (0, 1) "
                       "(default 0.01)")
    group.add_argument("--switch-step", type=_step, default=None, metavar="K",
                       help="fixed switch instead: steps >= K run on the small model")
    group.add_argument("--schedule", default=None, metavar="SPEC",
                       help="a cooperation schedule instead: which model runs which steps, e.g. 'small:20%%,large' "
                            "(small first), 'large:10,small:35,large' (sandwich), 'large:delta,small' (the default)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sr-plugin",
        description="Large and small transformers of one family cooperating in diffusers' Wan2.1 and CogVideoX "
                    "pipelines: the small model runs the steps where it costs no quality (SRDiffusion's switch, or "
                    "any cooperation schedule).")
    parser.add_argument("--version", action="version", version=f"sr-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{demo,generate,calibrate,bench,calibrate-delta}", parser_class=_Parser)
    for name, add in (("demo", _add_demo), ("generate", _add_generate), ("calibrate", _add_calibrate),
                      ("bench", _add_bench), ("calibrate-delta", _add_calibrate_delta)):
        _SUBPARSERS[name] = add(sub)
    return parser


def _add_demo(sub: Any) -> argparse.ArgumentParser:
    """`sr-plugin demo`: the main job."""
    demo = sub.add_parser("demo", formatter_class=_DefaultsShown, help="the trained families on held-out prompts: large only | SR | calibrated "
                          "schedule | small only, scored and timed, with a side-by-side GIF (CPU, under a minute)",
                          description="Runs the trained model families shipped in the package (sr_plugin/trained/) "
                                      "on held-out prompts of their task, under large only, SR, the family's "
                                      "calibrated schedule and small only; "
                                      "prints each prompt's result and a quality and time table, and writes one "
                                      "side-by-side GIF.")
    demo.add_argument("--family", choices=FAMILIES + ("all",), default="all")
    demo.add_argument("--prompts", type=_held_out_count, default=6,
                      help="how many held-out prompts per family (default 6, at most 64)")
    demo.add_argument("--steps", type=_steps, default=50, help="denoising steps (default 50)")
    demo.add_argument("--delta", type=_delta, default=None, help="adaptive switching threshold in (0, 1) "
                      "(default 0.01)")
    demo.add_argument("--out", default="sr-plugin-demo.gif", help="the GIF to write (default sr-plugin-demo.gif)")
    demo.add_argument("--json", default=None, metavar="PATH", help="also write every run's scores and times")
    return demo


def _add_generate(sub: Any) -> argparse.ArgumentParser:
    """`sr-plugin generate`: one video."""
    gen = sub.add_parser("generate", formatter_class=_DefaultsShown, help="generate a video with the switch; writes the video, its trace (JSON) "
                         "and a plot (PNG)",
                         description="Generate one video with the switch. Without --large/--small, the trained "
                                     "family shipped in the package runs (--family, default wan; the prompt must "
                                     "use its task's words, e.g. 'a red square moving left and a blue circle "
                                     "moving up'); --tiny runs the random-weight tiny pair instead. Writes OUT, "
                                     "OUT with .trace.json (per-step trace) and OUT with .switch.png (plot of d and s).")
    gen.add_argument("--prompt", required=True, help="what the video shows (for the trained families: their "
                     "task's words, e.g. 'a red square moving left and a blue circle moving up')")
    gen.add_argument("--out", required=True, help="the video file to write (.mp4)")
    gen.add_argument("--large", metavar="ID_OR_PATH", help="the large pipeline (hub id or local folder), e.g. "
                     "Wan-AI/Wan2.1-T2V-14B-Diffusers")
    gen.add_argument("--small", metavar="ID_OR_PATH", help="the small model whose 'transformer' subfolder is loaded, "
                     "e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    gen.add_argument("--family", help="a registered family: wan, cogvideox, ... (default: read from --large; wan "
                     "for the trained and the tiny pairs)")
    gen.add_argument("--local-files-only", action="store_true", help="never reach the Hugging Face Hub: --large "
                     "and --small must be local folders or already in the cache")
    gen.add_argument("--tiny", action="store_true", help="the built-in tiny pair with random weights (any prompt; "
                     "the video is noise)")
    _switch_options(gen)
    gen.add_argument("--min-switch-step", type=_step, default=None, metavar="K",
                     help="adaptive switch: not before step K (default max(3, ceil(0.1 N)))")
    gen.add_argument("--max-switch-step", type=_step, default=None, metavar="K",
                     help="adaptive switch: at step K at the latest (default floor(0.6 N))")
    gen.add_argument("--steps", type=_steps, default=None, help="denoising steps (default: the pipeline's)")
    gen.add_argument("--negative-prompt", default=None, help="the negative prompt (default: the pipeline's)")
    gen.add_argument("--guidance-scale", type=_threshold, default=None, help="CFG scale (default: the pipeline's, "
                     "or the trained family's own)")
    gen.add_argument("--fps", type=_positive_int, default=None, help="frames per second of the video written "
                     "(default: the family's)")
    gen.add_argument("--teacache", type=_threshold, default=None, metavar="THRESHOLD", help="also run TeaCache")
    gen.add_argument("--fbcache", type=_threshold, default=None, metavar="THRESHOLD",
                     help="also run diffusers' First Block Cache (not with --teacache)")
    gen.add_argument("--pab", action="store_true", help="also run CFG-aware Pyramid Attention Broadcast")
    gen.add_argument("--compile", action="store_true", help="also compile both transformers' blocks")
    gen.add_argument("--seed", type=int, default=0, help="seed of the initial noise (a CPU generator: the same "
                     "noise on every device)")
    gen.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                     help="the weights' dtype (default: bfloat16 for --large/--small on CUDA, else float32)")
    gen.add_argument("--device", default=None, help="where the models run, e.g. cpu, cuda, cuda:1 (default: cuda "
                     "for --large/--small when there is one, else cpu)")
    gen.add_argument("--height", type=_positive_int, default=None, help="video height in pixels (default: the "
                     "model folder's call_defaults.json, else the pipeline's)")
    gen.add_argument("--width", type=_positive_int, default=None, help="video width in pixels (default: the "
                     "model folder's call_defaults.json, else the pipeline's)")
    gen.add_argument("--frames", type=_positive_int, default=None, help="number of frames (default: the model "
                     "folder's call_defaults.json, else the pipeline's)")
    gen.add_argument("--max-sequence-length", type=_positive_int, default=None, metavar="TOKENS",
                     help="text tokens per prompt (default: the model folder's call_defaults.json, else the "
                     "pipeline's)")
    return gen


def _add_calibrate(sub: Any) -> argparse.ArgumentParser:
    """`sr-plugin calibrate`: the fastest schedule within a quality floor."""
    calib = sub.add_parser("calibrate", formatter_class=_DefaultsShown,
                           help="find the fastest cooperation schedule within a quality floor of large only",
                           description="Runs large only, small only and every candidate cooperation (large-first, "
                                       "small-first, sandwiches; each with the accelerations asked for) on the same "
                                       "(prompt, seed) pairs, and picks the fastest whose quality stays within the "
                                       "floor. On a trained family: its validation pairs, judged by the task's "
                                       "evaluator (--tolerance points of prompt accuracy). On your models "
                                       "(--large/--small): your --prompt(s), judged by SSIM against large only "
                                       "(--min-ssim). Cost: (candidates + 2) x pairs videos.")
    calib.add_argument("--family", choices=REGISTERED_FAMILIES, default=None,
                       help="the trained family (default wan), or the family of --large")
    calib.add_argument("--pairs", type=_held_out_count, default=16,
                       help="validation pairs of the trained family (at most 64)")
    calib.add_argument("--grid", choices=("cheap", "full"), default="cheap",
                       help="the candidate schedules: a coarse grid of each order, or a finer one")
    calib.add_argument("--schedules", nargs="+", default=None, metavar="SPEC",
                       help="these schedules instead of a grid, e.g. 'small:20%%,large' 'large:10,small:35,large'")
    calib.add_argument("--tolerance", type=_threshold, default=3.0,
                       help="points of prompt accuracy below large only that still hold the floor")
    calib.add_argument("--teacache", type=_threshold, nargs="+", default=None, metavar="THRESHOLD",
                       help="also try every schedule with TeaCache at these thresholds")
    calib.add_argument("--pab", action="store_true", help="also try with PAB (with each TeaCache threshold, if given)")
    calib.add_argument("--steps", type=_steps, default=50, help="denoising steps of every run")
    calib.add_argument("--large", metavar="ID_OR_PATH", help="your large pipeline (with --small and --prompt)")
    calib.add_argument("--small", metavar="ID_OR_PATH", help="your small model (its 'transformer' subfolder)")
    calib.add_argument("--prompt", action="append", default=None,
                       help="a prompt to calibrate on (repeat it; seeds 0, 1, ...); with --large/--small")
    calib.add_argument("--min-ssim", type=_fraction, default=None,
                       help="with --large/--small: the mean SSIM against large only to keep (default 0.9)")
    calib.add_argument("--confirm", action="store_true",
                       help="rerun the choice on new pairs (the same prompts, new seeds) and, where it misses the "
                            "floor there, the next fastest within it: a guard against picking a lucky candidate")
    calib.add_argument("--json", default=None, metavar="PATH", help="write the report as JSON")
    calib.add_argument("--plot", default=None, metavar="PATH", help="draw quality against speed-up (PNG)")
    return calib


def _add_bench(sub: Any) -> argparse.ArgumentParser:
    """`sr-plugin bench`: the CPU matrix on the tiny pair."""
    bench = sub.add_parser("bench", formatter_class=_DefaultsShown, help="run the CPU benchmark matrix on the tiny pair and print its table "
                           "(about 3 minutes per family with the defaults on a 2-core CPU)",
                           description="Each configuration against the unpatched tiny pipeline, interleaved round "
                                       "by round; the speed-up is the median of the paired per-round ratios.")
    from ..lab.bench_configs import BENCH_STEPS, CONFIGS

    bench.add_argument("--family", default="all", help="a registered family with a tiny pipeline (wan, cogvideox, "
                       "...) or all (default)")
    bench.add_argument("--configs", nargs="+", choices=CONFIGS, default=None, metavar="CONFIG",
                       help=f"configurations to run (default: all of {', '.join(CONFIGS)})")
    bench.add_argument("--steps", type=_steps, default=BENCH_STEPS, help="denoising steps per run")
    bench.add_argument("--rounds", type=_positive_int, default=10, help="timed rounds per configuration, each "
                       "paired with a round of the unpatched pipeline (after two warm-up rounds)")
    return bench


def _add_calibrate_delta(sub: Any) -> argparse.ArgumentParser:
    """`sr-plugin calibrate-delta`: the one-switch sweep."""
    cal = sub.add_parser("calibrate-delta", formatter_class=_DefaultsShown, help="sweep delta and fixed switch steps on a trained family and pick "
                         "the setting that meets a target",
                         description="Runs large only and every setting on training prompts of the family's task "
                                     "(disjoint from the held-out set), prints the sweep (time ratio, PSNR, SSIM, "
                                     "accuracy) and the setting picked: the largest speed-up keeping --min-ssim, "
                                     "or the best SSIM within --max-time-ratio. With --check-prompts, the picked "
                                     "setting is rerun on that many held-out prompts and its measured speed-up set "
                                     "against the promised one.")
    cal.add_argument("--family", choices=FAMILIES, default="wan")
    cal.add_argument("--prompts", type=_positive_int, default=8, help="training prompts to sweep on (default 8)")
    cal.add_argument("--steps", type=_steps, default=50, help="denoising steps of every run")
    cal.add_argument("--deltas", type=_delta, nargs="*", default=[0.001, 0.003, 0.01, 0.03, 0.1],
                     help="adaptive thresholds to sweep, each in (0, 1)")
    cal.add_argument("--switch-steps", type=_step, nargs="*", default=[], metavar="K",
                     help="fixed switch steps to sweep beside the deltas")
    cal.add_argument("--check-prompts", type=_held_out_or_none, default=0, help="held-out prompts to rerun the pick on (0: none)")
    target = cal.add_mutually_exclusive_group(required=True)
    target.add_argument("--min-ssim", type=_fraction, help="mean SSIM against large only to keep, in (0, 1]")
    target.add_argument("--max-time-ratio", type=_fraction, help="SR time / large-only time not to exceed, in (0, 1]")
    return cal


def _check_before_running(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks that need no model, at parse time: a problem is the short usage line and one line naming it,
    before anything heavy is imported or loaded."""
    from .outputs import UserError

    try:
        _CHECKS.get(args.command, lambda _: None)(args)
    except (UserError, ValueError) as err:
        if os.environ.get("SR_PLUGIN_TRACEBACK"):
            raise
        _SUBPARSERS[args.command].error(str(err))


def _check_generate(args: argparse.Namespace) -> None:
    from .generate_checks import GenerateOptions, check_options

    check_options(GenerateOptions.from_args(args), REGISTERED_FAMILIES)


def _check_demo(args: argparse.Namespace) -> None:
    from .outputs import check_output

    check_output(args.out, (".gif",))
    if args.json is not None:
        check_output(args.json, (".json",))


def _check_calibrate_delta(args: argparse.Namespace) -> None:
    from .outputs import UserError

    runs = args.prompts * (len(args.deltas) + len(args.switch_steps))
    if runs < MIN_CALIBRATION_RUNS:
        raise UserError(f"{args.prompts} prompt{'' if args.prompts == 1 else 's'} x "
                        f"{len(args.deltas) + len(args.switch_steps)} settings give {runs} paired runs: the "
                        f"step-time fit needs at least {MIN_CALIBRATION_RUNS} (give more --prompts)")


def _check_bench(args: argparse.Namespace) -> None:
    from .outputs import UserError

    if args.family != "all" and args.family not in REGISTERED_FAMILIES:
        raise UserError(f"unknown family {args.family!r} for the tiny benchmark; families with a tiny pipeline: "
                        f"{', '.join(REGISTERED_FAMILIES)}")


def _check_calibrate(args: argparse.Namespace) -> None:
    from .outputs import UserError, check_output

    if (args.large is None) != (args.small is None):
        raise UserError("give both --large and --small, or neither (for the trained family shipped in the package)")
    if args.large is None and (args.prompt or args.min_ssim is not None):
        raise UserError("--prompt and --min-ssim go with --large/--small; a trained family is calibrated on its "
                        "validation pairs, judged by its task (--tolerance)")
    for schedule in args.schedules or []:
        from ..switch.schedule import Schedule

        try:
            Schedule.parse(schedule)
        except (ValueError, TypeError) as err:
            raise UserError(f"--schedules {schedule!r}: {err}") from None
    for path, suffix in ((args.json, ".json"), (args.plot, ".png")):
        if path is not None:
            check_output(path, (suffix,))


_CHECKS = {"generate": _check_generate, "demo": _check_demo, "calibrate": _check_calibrate,
           "calibrate-delta": _check_calibrate_delta, "bench": _check_bench}


def _quiet_libraries() -> None:
    """sr-plugin shows its own progress: the libraries' loading bars and import chatter stay out."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _quiet_loading_bars() -> None:
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


def _run_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(FAMILIES if args.family == "all" else (args.family,), args.prompts, args.steps, args.delta, args.out,
             args.json)


def _run_generate(args: argparse.Namespace) -> None:
    from .generate import GenerateOptions, generate

    generate(GenerateOptions.from_args(args))


def _run_calibrate(args: argparse.Namespace) -> None:
    from .calibrate_schedule import run_calibrate

    run_calibrate(args.family, args.pairs, args.grid, args.schedules, args.tolerance, args.teacache, args.pab,
                  args.steps, args.json, args.plot, large=args.large, small=args.small, prompts=args.prompt,
                  min_ssim=args.min_ssim, confirm_choice=args.confirm)


def _run_calibrate_delta(args: argparse.Namespace) -> None:
    from .calibrate_delta import run_calibrate_delta

    run_calibrate_delta(args.family, args.prompts, args.steps, args.deltas, args.switch_steps, args.min_ssim,
                        args.max_time_ratio, check_prompts=args.check_prompts)


def _run_bench(args: argparse.Namespace) -> None:
    from ..lab.bench import run_matrix

    run_matrix(None if args.family == "all" else [args.family], args.configs, args.steps, args.rounds)


_RUNS = {"demo": _run_demo, "generate": _run_generate, "calibrate": _run_calibrate,
         "calibrate-delta": _run_calibrate_delta, "bench": _run_bench}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_before_running(parser, args)
    _quiet_libraries()
    try:
        if args.command != "bench":
            _quiet_loading_bars()
        _RUNS[args.command](args)
    except Exception as err:
        if os.environ.get("SR_PLUGIN_TRACEBACK"):  # every error, the user's mistakes included
            raise
        return _report(err)
    return 0


def _report(err: Exception) -> int:
    """One line on standard error for a failed command, and its exit code: 2 for the user's mistake, 1 else."""
    from .outputs import OutputError, UserError

    if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] in LAB_MODULES:
        print(f"sr-plugin: this command needs the lab extra: pip install 'sr-plugin[lab]' (missing: {err.name})",
              file=sys.stderr)
        return 1
    if isinstance(err, OutputError):
        print(f"sr-plugin: {err}", file=sys.stderr)
        return 1
    if isinstance(err, (UserError, ValueError, TypeError)):
        print(f"sr-plugin: {err}", file=sys.stderr)
        return 2
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    print(f"sr-plugin: the run failed: {type(err).__name__}: {first} (set SR_PLUGIN_TRACEBACK=1 for the "
          "traceback)", file=sys.stderr)
    return 1
