"""Output files of the command line: checked before any work, and checked again once written, so that nothing
is reported as written that was not (ffmpeg, for one, can fail without raising)."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable, Iterable


class UserError(Exception):
    """A problem the user can fix, reported as one sentence without a stack trace (exit code 2)."""


class OutputError(Exception):
    """An output file could not be written; one line naming it (exit code 1)."""


def check_output(
    path: str | os.PathLike[str], suffixes: tuple[str, ...], companions: Iterable[pathlib.Path] = ()
) -> pathlib.Path:
    """A writable output path with one of ``suffixes``, checked before any work: its folder exists and takes a
    new file (tried, not inferred from permissions: root may not write under /proc), and neither it nor the
    ``companions`` written beside it is a folder."""
    if not str(path).strip():
        raise ValueError(f"the output path is empty: name a {' or '.join(suffixes)} file")
    out = pathlib.Path(path)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"the output must name a {' or '.join(suffixes)} file, got {str(out)!r}")
    parent = out.parent if str(out.parent) else pathlib.Path(".")
    if not parent.is_dir():
        raise ValueError(f"cannot write {str(out)!r}: the folder {str(parent)!r} does not exist")
    for target in (out, *companions):
        if target.is_dir():
            raise ValueError(f"cannot write {str(target)!r}: it is a folder")
        if target.exists() and not os.access(target, os.W_OK):
            raise ValueError(f"cannot write {str(target)!r}: permission denied")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".sr-plugin-probe-")
    except OSError as err:
        raise ValueError(
            f"cannot write {str(out)!r}: the folder {str(parent)!r} does not take new files ({err.strerror or err})"
        ) from None
    os.close(fd)
    os.remove(probe)
    return out


def write_checked(path: pathlib.Path, write: Callable[[], object]) -> pathlib.Path:
    """Run ``write`` and check that ``path`` is then a non-empty file; any failure is one `OutputError` naming
    ``path``."""
    try:
        write()
    except Exception as err:  # OSError, ffmpeg's errors, ...: to the user, all "could not write this file"
        lines = str(err).strip().splitlines()
        raise OutputError(f"could not write {str(path)!r}: {lines[0] if lines else type(err).__name__}") from err
    if not path.is_file() or path.stat().st_size == 0:
        raise OutputError(f"could not write {str(path)!r}: the writer reported no error but left no file there")
    return path
