"""`sr-plugin` / `python -m sr_plugin`: one object per command (`Command`: its arguments, the checks that need no
model, its run), listed once in `COMMANDS`.

Parsing, --help and the parse-time checks import neither torch nor diffusers (the trained families are read from
the package's data, `sr_plugin.lab.shipped`); a check that needs the family registry imports it, and each command
imports what it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .. import __version__
from ..lab.shipped import FAMILY_NAMES

#: What the lab extra (pip install 'sr-plugin[lab]') brings, which the commands need and `apply` does not.
LAB_MODULES = ("skimage", "imageio", "imageio_ffmpeg", "matplotlib", "PIL")
#: calibrate-delta fits a small step's time over a large one's from its paired runs (median of the per-run
#: estimates): fewer than this many runs (prompts x settings) and one disturbed run moves the fit. Single paired
#: runs on a shared 2-core VM move by about 10%; with 8 the median holds (docs/results.md, "Speed against quality").
MIN_CALIBRATION_RUNS = 8
#: The most denoising steps any command takes (the schedules' 1,000 training timesteps).
MAX_STEPS = 1000


class Parser(argparse.ArgumentParser):
    """A bad argument: argparse's short usage line ("usage: sr-plugin generate [options]") and one line naming
    the problem, not the whole usage block."""

    def format_usage(self) -> str:
        return super().format_usage() if self.prog == "sr-plugin" else f"usage: {self.prog} [options]\n"

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.format_usage()}{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsShown(argparse.HelpFormatter):
    """--help shows each option's default, unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and "default" not in text
            and not any(action.default is v for v in (None, False, argparse.SUPPRESS))
        ):
            text += " (default: %(default)s)"
        return text


def checked(kind: type, ok: Any, rule: str) -> Any:
    """An argparse type: ``kind(text)`` that must satisfy ``ok``, else "must be <rule>" (also for text that is
    not a number at all)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'a whole number' if kind is int else 'a number'} {rule}, got {text!r}"
            ) from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return parse


STEPS = checked(int, lambda v: 1 <= v <= MAX_STEPS, f"between 1 and {MAX_STEPS}")
POSITIVE_INT = checked(int, lambda v: v >= 1, "at least 1")
STEP = checked(int, lambda v: v >= 0, ">= 0")
DELTA = checked(float, lambda v: 0 < v < 1, "in the open interval (0, 1)")
THRESHOLD = checked(float, lambda v: v >= 0, ">= 0")
FRACTION = checked(float, lambda v: 0 < v <= 1, "in (0, 1]")
HELD_OUT_COUNT = checked(int, lambda v: 1 <= v <= 64, "between 1 and 64 (the held-out set)")
HELD_OUT_OR_NONE = checked(int, lambda v: 0 <= v <= 64, "between 0 and 64 (the held-out set)")


def check_registered_family(family: str | None, what: str = "") -> None:
    """A family name checked against the adapters' registry (imports torch, not diffusers)."""
    if family is None:
        return
    from ..adapters import family_keys

    if family not in family_keys():
        from .outputs import UserError

        raise UserError(f"unknown family {family!r}{what}; known: {', '.join(family_keys())}")


def check_shipped_schedule(families: tuple[str, ...], steps: int, what: str) -> None:
    """The trained families' calibrated schedules fit ``steps`` (else one line saying how many they need)."""
    from ..lab import shipped
    from .outputs import UserError

    for family in families:
        schedule = shipped.shipped_schedule(family)
        if schedule is None:
            continue
        need = shipped.min_steps(schedule)
        if need is not None and steps < need:
            raise UserError(
                f"--steps {steps}: {what} runs {family}'s shipped calibrated schedule {schedule}, whose "
                f"segments need at least {need} steps (give --steps {need} or more)"
            )


class Command:
    """One subcommand: its name and help, its arguments, the checks that need no model (run at parse time, with
    the usage line on failure) and its run."""

    name = ""
    help = ""
    description = ""
    #: Whether the libraries' loading bars are turned off while it runs.
    quiet_loading = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def check(self, args: argparse.Namespace) -> None:
        """Raise `UserError` or ValueError for a problem that needs no model."""

    def run(self, args: argparse.Namespace) -> None:
        raise NotImplementedError


class Demo(Command):
    name = "demo"
    help = (
        "the trained families on held-out prompts: large only | SR | calibrated schedule | small only, scored "
        "and timed, with a side-by-side GIF (CPU, under a minute)"
    )
    description = (
        "Runs the trained model families shipped in the package (sr_plugin/trained/) on held-out prompts "
        "of their task, under large only, SR (SRDiffusion's adaptive rule at --delta), the family's "
        "calibrated schedule and small only; prints each prompt's result and a quality and time table, "
        "and writes one side-by-side GIF."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--family", choices=FAMILY_NAMES + ("all",), default="all")
        parser.add_argument(
            "--prompts",
            type=HELD_OUT_COUNT,
            default=6,
            help="how many held-out prompts per family (default 6, at most 64)",
        )
        parser.add_argument("--steps", type=STEPS, default=50, help="denoising steps (default 50)")
        parser.add_argument(
            "--delta",
            type=DELTA,
            default=None,
            help="the SR column's adaptive switching threshold in (0, 1) (default 0.01)",
        )
        parser.add_argument(
            "--small",
            choices=("competent", "weak"),
            default="competent",
            help="the small model: the shipped partner, or the weak one of the first release",
        )
        parser.add_argument("--out", default="sr-plugin-demo.gif", help="the GIF to write (default sr-plugin-demo.gif)")
        parser.add_argument("--json", default=None, metavar="PATH", help="also write every run's scores and times")

    def families(self, args: argparse.Namespace) -> tuple[str, ...]:
        return FAMILY_NAMES if args.family == "all" else (args.family,)

    def check(self, args: argparse.Namespace) -> None:
        from .outputs import check_output

        check_output(args.out, (".gif",))
        if args.json is not None:
            check_output(args.json, (".json",))
        if args.small == "competent":
            check_shipped_schedule(self.families(args), args.steps, "the demo's calibrated column")

    def run(self, args: argparse.Namespace) -> None:
        from .demo import run_demo

        run_demo(self.families(args), args.prompts, args.steps, args.delta, args.out, args.json, small=args.small)


class Generate(Command):
    name = "generate"
    help = "generate a video with the switch; writes the video, its trace (JSON) and a plot (PNG)"
    description = (
        "Generate one video with the switch. Without --large/--small, the trained family shipped in the "
        "package runs (--family, default wan; the prompt must use its task's words, e.g. 'a red square "
        "moving left and a blue circle moving up') with its shipped calibrated schedule unless --delta, "
        "--switch-step or --schedule says otherwise; --tiny runs the random-weight tiny pair instead. "
        "With --large/--small and --tiny the default is SRDiffusion's adaptive rule (delta 0.01). Writes "
        "OUT, OUT with .trace.json (per-step trace) and OUT with .switch.png (plot of d and s)."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--prompt",
            required=True,
            help="what the video shows (for the trained families: "
            "their task's words, e.g. 'a red square moving left and a blue circle moving up')",
        )
        parser.add_argument("--out", required=True, help="the video file to write (.mp4)")
        parser.add_argument(
            "--large",
            metavar="ID_OR_PATH",
            help="the large pipeline (hub id or local folder), e.g. Wan-AI/Wan2.1-T2V-14B-Diffusers",
        )
        parser.add_argument(
            "--small",
            metavar="ID_OR_PATH",
            help="the small model whose 'transformer' subfolder is loaded, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        )
        parser.add_argument(
            "--family",
            help="a registered family: wan, cogvideox, ... (default: read from --large; "
            "wan for the trained and the tiny pairs)",
        )
        parser.add_argument(
            "--local-files-only",
            action="store_true",
            help="never reach the Hugging Face Hub: --large and --small must be local folders or already in the cache",
        )
        parser.add_argument(
            "--tiny",
            action="store_true",
            help="the built-in tiny pair with random weights (any prompt; the video is noise)",
        )
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--delta",
            type=DELTA,
            default=None,
            help="SRDiffusion's adaptive switch at this "
            "threshold in (0, 1) (the default with --large/--small and --tiny: 0.01)",
        )
        group.add_argument(
            "--switch-step",
            type=STEP,
            default=None,
            metavar="K",
            help="a fixed switch instead: steps >= K run on the small model",
        )
        group.add_argument(
            "--schedule",
            default=None,
            metavar="SPEC",
            help="a cooperation schedule instead: which model runs which steps, e.g. "
            "'small:20%%,large' (small first), 'large:10,small:35,large' (sandwich), "
            "'large:delta,small' (SRDiffusion's rule); the default on a trained family is its "
            "shipped calibrated schedule",
        )
        parser.add_argument(
            "--min-switch-step",
            type=STEP,
            default=None,
            metavar="K",
            help="adaptive switch: not before step K (default max(3, ceil(0.1 N)))",
        )
        parser.add_argument(
            "--max-switch-step",
            type=STEP,
            default=None,
            metavar="K",
            help="adaptive switch: at step K at the latest (default floor(0.6 N))",
        )
        parser.add_argument("--steps", type=STEPS, default=None, help="denoising steps (default: the pipeline's)")
        parser.add_argument("--negative-prompt", default=None, help="the negative prompt (default: the pipeline's)")
        parser.add_argument(
            "--guidance-scale",
            type=THRESHOLD,
            default=None,
            help="CFG scale (default: the pipeline's, or the trained family's own)",
        )
        parser.add_argument(
            "--fps",
            type=POSITIVE_INT,
            default=None,
            help="frames per second of the video written (default: the family's)",
        )
        parser.add_argument("--teacache", type=THRESHOLD, default=None, metavar="THRESHOLD", help="also run TeaCache")
        parser.add_argument(
            "--fbcache",
            type=THRESHOLD,
            default=None,
            metavar="THRESHOLD",
            help="also run diffusers' First Block Cache (not with --teacache)",
        )
        parser.add_argument("--pab", action="store_true", help="also run CFG-aware Pyramid Attention Broadcast")
        parser.add_argument("--compile", action="store_true", help="also compile both transformers' blocks")
        parser.add_argument(
            "--seed",
            type=int,
            default=0,
            help="seed of the initial noise (a CPU generator: the same noise on every device)",
        )
        parser.add_argument(
            "--dtype",
            choices=("float32", "bfloat16", "float16"),
            default=None,
            help="the weights' dtype (default: bfloat16 for --large/--small on CUDA, else float32)",
        )
        parser.add_argument(
            "--device",
            default=None,
            help="where the models run, e.g. cpu, cuda, cuda:1 (default: "
            "cuda for --large/--small when there is one, else cpu)",
        )
        for flag, what in (
            ("--height", "video height in pixels"),
            ("--width", "video width in pixels"),
            ("--frames", "number of frames"),
        ):
            parser.add_argument(
                flag,
                type=POSITIVE_INT,
                default=None,
                help=f"{what} (default: the model folder's call_defaults.json, else the pipeline's)",
            )
        parser.add_argument(
            "--max-sequence-length",
            type=POSITIVE_INT,
            default=None,
            metavar="TOKENS",
            help="text tokens per prompt (default: the model folder's call_defaults.json, else the pipeline's)",
        )

    def check(self, args: argparse.Namespace) -> None:
        from .generate_checks import GenerateOptions, check_options

        options = GenerateOptions.from_args(args)
        check_registered_family(options.family)
        check_options(options)
        if options.source == "trained" and options.rule_given is False and options.steps is not None:
            check_shipped_schedule(
                (options.family or "wan",), options.steps, "generate (no --delta, --switch-step or --schedule)"
            )

    def run(self, args: argparse.Namespace) -> None:
        from .generate import GenerateOptions, generate

        generate(GenerateOptions.from_args(args))


class Calibrate(Command):
    name = "calibrate"
    help = "find the fastest cooperation schedule within a quality floor of large only"
    description = (
        "Tries large only, small only and the candidate cooperations (large-first, small-first, "
        "sandwiches; each with the accelerations asked for) on the same (prompt, seed) pairs, and picks "
        "the fastest whose quality stays within the floor: fastest first, each candidate dropped as soon "
        "as it can no longer hold the floor, steps shared with an earlier run replayed instead of "
        "recomputed (--search grid: every candidate on every pair). On a trained family: its "
        "validation pairs, judged by the task's evaluator (--tolerance points of prompt accuracy). On "
        "your models (--large/--small): your --prompt(s), judged by SSIM against large only "
        "(--min-ssim). The cost is printed before the first video."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--family", default=None, help="the trained family (default wan), or the family of --large")
        parser.add_argument(
            "--pairs", type=HELD_OUT_COUNT, default=16, help="validation pairs of the trained family (at most 64)"
        )
        parser.add_argument(
            "--grid",
            choices=("cheap", "full"),
            default="cheap",
            help="the candidate schedules: a coarse grid of each order, or a finer one",
        )
        parser.add_argument(
            "--schedules",
            nargs="+",
            default=None,
            metavar="SPEC",
            help="these schedules instead of a grid, e.g. 'small:20%%,large' 'large:10,small:35,large'",
        )
        parser.add_argument(
            "--search",
            choices=("fastest", "grid"),
            default="fastest",
            help="fastest first with early drops, or every candidate on every pair",
        )
        parser.add_argument(
            "--tolerance",
            type=THRESHOLD,
            default=3.0,
            help="points of prompt accuracy below large only that still hold the floor",
        )
        parser.add_argument(
            "--teacache",
            type=THRESHOLD,
            nargs="+",
            default=None,
            metavar="THRESHOLD",
            help="also try every schedule with TeaCache at these thresholds",
        )
        parser.add_argument(
            "--pab", action="store_true", help="also try with PAB (with each TeaCache threshold, if given)"
        )
        parser.add_argument("--steps", type=STEPS, default=50, help="denoising steps of every run")
        parser.add_argument("--large", metavar="ID_OR_PATH", help="your large pipeline (with --small and --prompt)")
        parser.add_argument("--small", metavar="ID_OR_PATH", help="your small model (its 'transformer' subfolder)")
        parser.add_argument(
            "--prompt",
            action="append",
            default=None,
            help="a prompt to calibrate on (repeat it; seeds 0, 1, ...); with --large/--small",
        )
        parser.add_argument(
            "--min-ssim",
            type=FRACTION,
            default=None,
            help="with --large/--small: the mean SSIM against large only to keep (default 0.9)",
        )
        parser.add_argument(
            "--step-times",
            type=THRESHOLD,
            nargs=2,
            default=None,
            metavar=("LARGE_S", "SMALL_S"),
            help="plan with these seconds per large and per small step (e.g. measured on the GPU "
            "you will calibrate on): print the cost and stop before the first video",
        )
        parser.add_argument(
            "--resume",
            default=None,
            metavar="REPORT.json",
            help="continue a calibration that was cut off, from the pairs its report finished "
            "(the report --json writes after every candidate's pair)",
        )
        parser.add_argument(
            "--confirm",
            action="store_true",
            help="rerun the choice on new pairs (the same prompts, new seeds) and, where it misses "
            "the floor there, the next fastest within it: a guard against a lucky candidate",
        )
        parser.add_argument(
            "--json",
            default=None,
            metavar="PATH",
            help="write the report as JSON (and keep it up to date while the calibration runs, for --resume)",
        )
        parser.add_argument("--plot", default=None, metavar="PATH", help="draw quality against speed-up (PNG)")

    def check(self, args: argparse.Namespace) -> None:
        import pathlib

        from ..switch.schedule import Schedule
        from .outputs import UserError, check_output

        if (args.large is None) != (args.small is None):
            raise UserError("give both --large and --small, or neither (for the trained family shipped in the package)")
        if args.large is None and (args.prompt or args.min_ssim is not None):
            raise UserError(
                "--prompt and --min-ssim go with --large/--small; a trained family is calibrated on "
                "its validation pairs, judged by its task (--tolerance)"
            )
        if args.large is None and args.family is not None and args.family not in FAMILY_NAMES:
            raise UserError(f"--family {args.family!r}: the trained families are {', '.join(FAMILY_NAMES)}")
        for schedule in args.schedules or []:
            try:
                Schedule.parse(schedule)
            except (ValueError, TypeError) as err:
                raise UserError(f"--schedules {schedule!r}: {err}") from None
        if args.resume is not None and not pathlib.Path(args.resume).is_file():
            raise UserError(f"--resume {args.resume!r}: there is no such report")
        for path, suffix in ((args.json, ".json"), (args.plot, ".png")):
            if path is not None:
                check_output(path, (suffix,))
        if args.large is not None:
            check_registered_family(args.family)

    def run(self, args: argparse.Namespace) -> None:
        from .calibrate_schedule import run_calibrate

        run_calibrate(args)


class Bench(Command):
    name = "bench"
    help = (
        "run the CPU benchmark matrix on the tiny pair and print its table (about 3 minutes per family with the "
        "defaults on a 2-core CPU)"
    )
    description = (
        "Each configuration against the unpatched tiny pipeline, interleaved round by round; the speed-up "
        "is the median of the paired per-round ratios."
    )
    quiet_loading = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from ..lab.bench_configs import BENCH_STEPS, CONFIGS

        parser.add_argument(
            "--family",
            default="all",
            help="a registered family with a tiny pipeline (wan, cogvideox, ...) or all (default)",
        )
        parser.add_argument(
            "--configs",
            nargs="+",
            choices=CONFIGS,
            default=None,
            metavar="CONFIG",
            help=f"configurations to run (default: all of {', '.join(CONFIGS)})",
        )
        parser.add_argument("--steps", type=STEPS, default=BENCH_STEPS, help="denoising steps per run")
        parser.add_argument(
            "--rounds",
            type=POSITIVE_INT,
            default=10,
            help="timed rounds per configuration, each "
            "paired with a round of the unpatched pipeline (after two warm-up rounds)",
        )

    def check(self, args: argparse.Namespace) -> None:
        if args.family != "all":
            check_registered_family(args.family, " for the tiny benchmark")

    def run(self, args: argparse.Namespace) -> None:
        from ..lab.bench import run_matrix

        run_matrix(None if args.family == "all" else [args.family], args.configs, args.steps, args.rounds)


class CalibrateDelta(Command):
    name = "calibrate-delta"
    help = "sweep delta and fixed switch steps on a trained family and pick the setting that meets a target"
    description = (
        "Runs large only and every setting on training prompts of the family's task (disjoint from the "
        "held-out set), prints the sweep (time ratio, PSNR, SSIM, accuracy) and the setting picked: the "
        "largest speed-up keeping --min-ssim, or the best SSIM within --max-time-ratio. With "
        "--check-prompts, the picked setting is rerun on that many held-out prompts and its measured "
        "speed-up set against the promised one."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--family", choices=FAMILY_NAMES, default="wan")
        parser.add_argument("--prompts", type=POSITIVE_INT, default=8, help="training prompts to sweep on (default 8)")
        parser.add_argument("--steps", type=STEPS, default=50, help="denoising steps of every run")
        parser.add_argument(
            "--deltas",
            type=DELTA,
            nargs="*",
            default=[0.001, 0.003, 0.01, 0.03, 0.1],
            help="adaptive thresholds to sweep, each in (0, 1)",
        )
        parser.add_argument(
            "--switch-steps",
            type=STEP,
            nargs="*",
            default=[],
            metavar="K",
            help="fixed switch steps to sweep beside the deltas",
        )
        parser.add_argument(
            "--check-prompts", type=HELD_OUT_OR_NONE, default=0, help="held-out prompts to rerun the pick on (0: none)"
        )
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--min-ssim", type=FRACTION, help="mean SSIM against large only to keep, in (0, 1]")
        target.add_argument(
            "--max-time-ratio", type=FRACTION, help="SR time / large-only time not to exceed, in (0, 1]"
        )

    def check(self, args: argparse.Namespace) -> None:
        from .outputs import UserError

        runs = args.prompts * (len(args.deltas) + len(args.switch_steps))
        if runs < MIN_CALIBRATION_RUNS:
            raise UserError(
                f"{args.prompts} prompt{'' if args.prompts == 1 else 's'} x "
                f"{len(args.deltas) + len(args.switch_steps)} settings give {runs} paired runs: the "
                f"step-time fit needs at least {MIN_CALIBRATION_RUNS} (give more --prompts)"
            )

    def run(self, args: argparse.Namespace) -> None:
        from .calibrate_delta import run_calibrate_delta

        run_calibrate_delta(
            args.family,
            args.prompts,
            args.steps,
            args.deltas,
            args.switch_steps,
            args.min_ssim,
            args.max_time_ratio,
            check_prompts=args.check_prompts,
        )


#: Every command, in the order --help lists them.
COMMANDS: tuple[Command, ...] = (Demo(), Generate(), Calibrate(), Bench(), CalibrateDelta())


def build_parser() -> tuple[Parser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each command's own (whose `error` reports a failed parse-time check)."""
    parser = Parser(
        prog="sr-plugin",
        description="Large and small transformers of one family cooperating in diffusers' Wan2.1 and CogVideoX "
        "pipelines: the small model runs the steps where it costs no quality (SRDiffusion's switch, or "
        "any cooperation schedule).",
    )
    parser.add_argument("--version", action="version", version=f"sr-plugin {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{" + ",".join(c.name for c in COMMANDS) + "}", parser_class=Parser
    )
    own = {}
    for command in COMMANDS:
        own[command.name] = sub.add_parser(
            command.name, help=command.help, description=command.description, formatter_class=DefaultsShown
        )
        command.add_arguments(own[command.name])
    return parser, own


#: Log lines of libraries below sr-plugin that say nothing to its users.
QUIET_LOGGERS = ("torch.utils._pytree",)


def main(argv: list[str] | None = None) -> int:
    parser, own = build_parser()
    args = parser.parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    from .outputs import UserError

    try:
        command.check(args)
    except (UserError, ValueError) as err:
        if os.environ.get("SR_PLUGIN_TRACEBACK"):
            raise
        own[command.name].error(str(err))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        if command.quiet_loading:
            _quiet_loading_bars()
        command.run(args)
    except Exception as err:
        if os.environ.get("SR_PLUGIN_TRACEBACK"):  # every error, the user's mistakes included
            raise
        return _report(err)
    return 0


def _quiet_loading_bars() -> None:
    """sr-plugin shows its own progress: the libraries' loading bars and import chatter stay out."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


def _report(err: Exception) -> int:
    """One line on standard error for a failed command, and its exit code: 2 for the user's mistake, 1 else."""
    from .outputs import OutputError, UserError

    if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] in LAB_MODULES:
        print(
            f"sr-plugin: this command needs the lab extra: pip install 'sr-plugin[lab]' (missing: {err.name})",
            file=sys.stderr,
        )
        return 1
    if isinstance(err, OutputError):
        print(f"sr-plugin: {err}", file=sys.stderr)
        return 1
    if isinstance(err, (UserError, ValueError, TypeError)):
        print(f"sr-plugin: {err}", file=sys.stderr)
        return 2
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    print(
        f"sr-plugin: the run failed: {type(err).__name__}: {first} (set SR_PLUGIN_TRACEBACK=1 for the traceback)",
        file=sys.stderr,
    )
    return 1
