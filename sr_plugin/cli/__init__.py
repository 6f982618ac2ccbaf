"""The command line (`sr-plugin`, `python -m sr_plugin`): demo, generate, calibrate, bench, calibrate-delta, one
`Command` object each (`main.COMMANDS`). Parsing and --help import nothing heavy; each command imports what it
runs."""

from .main import COMMANDS, Command, build_parser, main

__all__ = ["COMMANDS", "Command", "build_parser", "main"]
