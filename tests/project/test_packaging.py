"""Every package directory ships in the wheel (an editable install hides a missing one: it happened)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import tomllib

ROOT = pathlib.Path(__file__).parents[2]


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
    files = [
        p.relative_to(ROOT / "sr_plugin").as_posix() for p in (ROOT / "sr_plugin" / "trained").rglob("*") if p.is_file()
    ]
    assert files
    missed = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not missed, f"not shipped: {missed}"


def test_the_built_wheel_works_outside_the_checkout(tmp_path):
    """Build the wheel from a copy of the sources, unpack it, and run a test file and the shipped family
    against the unpacked package only (the checkout is not on the path): a module or data file that only the
    checkout has shows up here."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("sr_plugin", "adapters"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("sr_plugin-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    check = (
        "import sr_plugin, sr_plugin.adapters, pathlib; from sr_plugin.lab import trained; "
        f"assert pathlib.Path(sr_plugin.__file__).is_relative_to({str(site)!r}), sr_plugin.__file__; "
        f"assert pathlib.Path(sr_plugin.adapters.__file__).is_relative_to({str(site)!r}); "
        "trained.load('wan'); trained.load('cogvideox'); print('ok')"
    )
    ran = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0 and ran.stdout.strip().endswith("ok"), ran.stderr[-2000:]
    tests = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "switch" / "test_adaptive_rule.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout[-2000:]


def test_a_checkout_runs_as_one_package_beside_an_installed_copy():
    """`pip install .` then `python -m pytest` in the checkout: the checkout's sr_plugin/ comes first on the
    path, and its adapters/ must be its sr_plugin.adapters (not missing, not the installed copy's)."""
    import sr_plugin
    import sr_plugin.adapters

    if pathlib.Path(sr_plugin.__file__).parent == ROOT / "sr_plugin":
        assert pathlib.Path(sr_plugin.adapters.__file__).parent.resolve() == ROOT / "adapters"


def test_the_api_runs_from_the_folder_the_package_was_installed_from():
    """A non-editable install, then Python started in the checkout's root (the README's set-up): the checkout's
    sr_plugin/ comes first on the path, and its adapters are found through the sr_plugin/adapters link to the
    top-level adapters/ folder."""
    check = (
        "import pathlib, sr_plugin; from sr_plugin.lab import trained; trained.load('wan'); "
        "import sr_plugin.adapters as a; print(pathlib.Path(a.__file__).resolve())"
    )
    ran = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip() == str(ROOT / "adapters" / "__init__.py")
    module = subprocess.run(
        [sys.executable, "-m", "sr_plugin", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert module.returncode == 0 and module.stdout.startswith("sr-plugin"), module.stderr[-2000:]
