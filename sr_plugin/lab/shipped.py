"""Where the trained families shipped in the package live, and what is written beside them: plain paths and JSON,
no torch, so that the command line can read them while it parses its arguments.

Each family has ``large`` and ``small`` pipeline folders under ``sr_plugin/trained/<family>/`` (the weak small
model of the first release under ``small-weak``), and the cooperation schedule its calibration shipped
(``calibrated.json``).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

#: The trained families, in the order the docs and the demo show them (a test checks the folders agree).
FAMILY_NAMES: tuple[str, ...] = ("wan", "cogvideox")
ROLES: tuple[str, ...] = ("large", "small")
#: The small models a family ships: the default competent partner, and the weak one of the first release.
SMALL_MODELS: dict[str, str] = {"competent": "small", "weak": "small-weak"}
#: The shipped folders: package data beside the rooms (sr_plugin/trained/<family>/<role>/).
ROOT = pathlib.Path(__file__).parents[1] / "trained"
#: The calibrated cooperation schedule of a family, beside its folders.
CALIBRATED_FILE = "calibrated.json"


def check_family(family: str) -> str:
    if family not in FAMILY_NAMES:
        raise ValueError(f"unknown family {family!r}; the trained families are: {', '.join(FAMILY_NAMES)}")
    return family


def folder(family: str, role: str) -> pathlib.Path:
    """A family's pipeline folder: ``role`` is "large", "small" or a folder of `SMALL_MODELS` ("small-weak")."""
    check_family(family)
    if role not in ROLES and role not in SMALL_MODELS.values():
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return ROOT / family / role


def calibrated(family: str) -> dict[str, Any] | None:
    """What the family's shipped calibration found: ``{"schedule": ..., "within_floor": ..., "summary": ...,
    "command": ..., ...}``, or None if none is shipped."""
    path = ROOT / check_family(family) / CALIBRATED_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def shipped_schedule(family: str) -> str | None:
    """The family's calibrated cooperation schedule, as a schedule string (None: none shipped)."""
    found = calibrated(family)
    return None if found is None else str(found["schedule"])


def min_steps(schedule: str, limit: int = 1000) -> int | None:
    """The fewest denoising steps a call needs for every segment of ``schedule`` to get a step (evenly spaced
    timesteps), or None if none up to ``limit`` does."""
    from ..switch.schedule import Schedule, roles_of

    parsed = Schedule.parse(schedule)
    if parsed.adaptive is not None:
        return None
    for n in range(1, limit + 1):
        try:
            roles_of(parsed, n)
        except ValueError:
            continue
        return n
    return None
