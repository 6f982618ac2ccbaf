"""`sr-plugin` / `python -m sr_plugin`: the command line."""

from __future__ import annotations

import argparse
import sys

from .tiny import FAMILIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sr-plugin", description="Sketch-rendering cooperation for diffusers "
                                     "Wan2.1 and CogVideoX pipelines.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="baseline and SR runs on the built-in tiny pair (random weights, CPU ok)")
    demo.add_argument("--family", choices=FAMILIES + ("all",), default="all")
    demo.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    group = demo.add_mutually_exclusive_group()
    group.add_argument("--delta", type=float, default=None, help="adaptive threshold (default 0.01)")
    group.add_argument("--switch-step", type=int, default=None, help="fixed switch step instead")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        if args.steps < 1:
            print("sr-plugin: --steps must be at least 1", file=sys.stderr)
            return 2
        families = FAMILIES if args.family == "all" else (args.family,)
        try:
            for family in families:
                run_demo(family, args.steps, args.delta, args.switch_step, args.seed)
                print()
        except (ValueError, TypeError) as err:
            print(f"sr-plugin: {err}", file=sys.stderr)
            return 2
    return 0
