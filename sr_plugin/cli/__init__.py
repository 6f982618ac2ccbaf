"""The command line (`sr-plugin`, `python -m sr_plugin`): demo, generate, bench, calibrate-delta. Parsing and
--help import nothing heavy; each command imports what it runs."""

from .main import FAMILIES, REGISTERED_FAMILIES, build_parser, main

__all__ = ["FAMILIES", "REGISTERED_FAMILIES", "build_parser", "main"]
