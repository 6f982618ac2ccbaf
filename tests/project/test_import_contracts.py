"""The import rules between the rooms, as import-linter contracts (pyproject.toml, [tool.importlinter]) over the
installed package. (ruff's rules, its formatter and mypy run in .ci/run beside the tests.)"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold():
    """Among them: the switch and the accelerations do not import each other (they meet in the call tracker),
    the policy is plain float logic, and neither imports the trained families or the command line."""
    lint = shutil.which("lint-imports") or str(pathlib.Path(sys.executable).parent / "lint-imports")
    result = subprocess.run(
        [lint, "--no-cache", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=pathlib.Path(__file__).parent,
    )  # the installed package
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-1000:]
    assert "0 broken" in result.stdout and "kept" in result.stdout
