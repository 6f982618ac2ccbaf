"""Every package directory ships in the wheel (an editable install hides a missing one: it happened)."""

from __future__ import annotations

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).parents[1]


def test_every_package_directory_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    package_dir = config["package-dir"]
    found = set()
    for name, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            if "__pycache__" not in relative.parts:
                found.add(".".join([name, *relative.parts]))
    assert found <= listed, f"not shipped: {sorted(found - listed)}"
    assert {"sr_plugin", "sr_plugin.accel", "sr_plugin.adapters"} <= found


def test_every_trained_family_file_is_package_data():
    """The wheel carries the trained folders only through these globs: a file they miss would be missing after
    a non-editable install."""
    import fnmatch

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sr_plugin"]
    files = [p.relative_to(ROOT / "sr_plugin").as_posix() for p in (ROOT / "sr_plugin" / "trained").rglob("*")
             if p.is_file()]
    assert files
    missed = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not missed, f"not shipped: {missed}"
