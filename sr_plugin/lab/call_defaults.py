"""What a model folder was made for: the call arguments its models were trained at, in ``call_defaults.json``
at the folder's root (beside ``model_index.json``).

diffusers has no place for a pipeline folder's intended call geometry (a hub checkpoint says it in its model
card), so `sr-plugin generate` reads it from this file when the user gives none of these arguments:

    {"height": 32, "width": 32, "num_frames": 9, "max_sequence_length": 16, "guidance_scale": 5.0, "fps": 8}

Every key is optional; the shipped trained families carry all of them. A folder without the file runs at its
pipeline's own defaults.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

FILE = "call_defaults.json"
#: Key -> the type its value must have (the pipeline call's arguments, and the video's frames per second).
KEYS: dict[str, type] = {
    "height": int,
    "width": int,
    "num_frames": int,
    "max_sequence_length": int,
    "guidance_scale": float,
    "fps": int,
}


def read(folder: str | pathlib.Path) -> dict[str, Any]:
    """The folder's call defaults ({} without the file); a malformed file is a ValueError naming it."""
    path = pathlib.Path(folder) / FILE
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {str(path)!r}: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object of {', '.join(KEYS)}")
    for key, value in values.items():
        kind = KEYS.get(key)
        if kind is None:
            raise ValueError(f"{str(path)!r}: unknown key {key!r}; the keys are {', '.join(KEYS)}")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value <= 0
            or (kind is int and not isinstance(value, int))
        ):
            raise ValueError(f"{str(path)!r}: {key} must be a positive {kind.__name__}, got {value!r}")
    return values


def write(folder: str | pathlib.Path, values: dict[str, Any]) -> pathlib.Path:
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown call default(s) {', '.join(unknown)}; the keys are {', '.join(KEYS)}")
    path = pathlib.Path(folder) / FILE
    path.write_text(json.dumps(values, indent=2) + "\n")
    return path
