"""What a new user trips on: the shipped folders through --large/--small, output writes that fail,
checks that need no model made before anything heavy, and the messages that go with them."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from test_commands import cli

from sr_plugin.lab import call_defaults, trained

PROMPT = "a red square moving left and a blue circle moving up"


def main(*argv: str) -> tuple[int, str, str]:
    """The command line in this process (its heavy imports are paid once for the whole file)."""
    import contextlib
    import io

    from sr_plugin import cli as cli_module

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_module.main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def check_shipped_video(out: pathlib.Path, family: str) -> None:
    import imageio.v3 as iio

    assert iio.imread(out).shape[:3] == (9, 32, 32)
    record = json.loads(out.with_suffix(".trace.json").read_text())
    assert record["call"]["max_sequence_length"] == 16 and record["call"]["guidance_scale"] == trained.GUIDANCE[family]


def test_the_shipped_cogvideox_folders_run_through_large_and_small(tmp_path: pathlib.Path):
    """The folders say what they were made for (call_defaults.json): size, frames and text length."""
    out = tmp_path / "v.mp4"
    code, _, err = main(
        "generate",
        "--prompt",
        PROMPT,
        "--large",
        str(trained.folder("cogvideox", "large")),
        "--small",
        str(trained.folder("cogvideox", "small")),
        "--steps",
        "2",
        "--out",
        str(out),
    )
    assert code == 0, err[-2000:]
    check_shipped_video(out, "cogvideox")


def test_the_shipped_wan_folders_run_in_bfloat16_showing_only_sr_plugins_progress(tmp_path: pathlib.Path):
    """A fresh process, as a user runs it: no library loading bars, no torchao import chatter, no dtype
    warnings (the weights load in their dtype)."""
    out = tmp_path / "v.mp4"
    result = cli(
        "generate",
        "--prompt",
        PROMPT,
        "--large",
        str(trained.folder("wan", "large")),
        "--small",
        str(trained.folder("wan", "small")),
        "--steps",
        "2",
        "--out",
        str(out),
        "--dtype",
        "bfloat16",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    check_shipped_video(out, "wan")
    text = result.stdout + result.stderr
    for noise in ("Loading pipeline components", "Loading weights", "torchao", "torch_dtype", "_C_mxfp8"):
        assert noise not in text, noise
    assert "sr-plugin: loading the models" in result.stdout


def test_every_shipped_folder_carries_the_call_it_was_trained_for():
    for family in trained.FAMILY_NAMES:
        for role in trained.ROLES:
            assert call_defaults.read(trained.folder(family, role)) == trained.call_defaults(family)


def test_a_malformed_call_defaults_file_names_itself(tmp_path: pathlib.Path):
    (tmp_path / call_defaults.FILE).write_text('{"height": "tall"}')
    with pytest.raises(ValueError, match="call_defaults.json'?: height must be a positive int"):
        call_defaults.read(tmp_path)
    (tmp_path / call_defaults.FILE).write_text('{"colour": 3}')
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        call_defaults.read(tmp_path)


def test_max_sequence_length_reaches_the_call(monkeypatch):
    import sr_plugin.cli.generate
    from sr_plugin import cli as cli_module

    seen = {}
    monkeypatch.setattr(sr_plugin.cli.generate, "generate", lambda options: seen.update(options=options))
    assert cli_module.main(["generate", "--prompt", PROMPT, "--out", "x.mp4", "--max-sequence-length", "24"]) == 0
    assert seen["options"].max_sequence_length == 24


def test_a_video_the_writer_did_not_write_is_an_error_not_a_success(tmp_path, monkeypatch, capsys):
    """ffmpeg can fail without raising: the file is checked after writing, exit 1, and nothing else is written."""
    import diffusers.utils

    from sr_plugin import cli as cli_module

    monkeypatch.setattr(diffusers.utils, "export_to_video", lambda frames, path, fps=None: path)
    out = tmp_path / "v.mp4"
    code = cli_module.main(["generate", "--tiny", "--prompt", "a fox", "--steps", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.strip().splitlines()[-1] == (
        f"sr-plugin: could not write '{out}': the writer reported no error but left no file there"
    )
    assert "wrote" not in captured.out and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "make_out,message",
    [
        (lambda tmp: (tmp / "d.mp4").mkdir() or tmp / "d.mp4", "d.mp4': it is a folder"),
        (lambda tmp: (tmp / "v.trace.json").mkdir() or tmp / "v.mp4", "v.trace.json': it is a folder"),
        (lambda tmp: pathlib.Path("/proc/sr-plugin-test.mp4"), "cannot write '/proc/sr-plugin-test.mp4'"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_anything_runs(tmp_path, make_out, message):
    out = make_out(tmp_path)
    code, stdout, stderr = main("generate", "--prompt", PROMPT, "--out", str(out), "--steps", "2")
    assert code == 2 and message in stderr and "wrote" not in stdout and "Traceback" not in stderr


def test_checks_that_need_no_model_run_at_parse_time_without_heavy_imports():
    """Each of these used to wait for torch, diffusers and the model load (11-19 s)."""
    code = """
import sys, contextlib, io
from sr_plugin import cli
cases = {
    'vocabulary': ['generate', '--prompt', 'a purple fox', '--out', 'x.mp4'],
    'extension': ['generate', '--prompt', 'x', '--tiny', '--out', 'x.avi'],
    'folder': ['generate', '--prompt', 'x', '--tiny', '--out', 'no/such/x.mp4'],
    'bounds': ['generate', '--prompt', 'x', '--tiny', '--out', 'x.mp4', '--min-switch-step', '9',
               '--max-switch-step', '3'],
    'caches': ['generate', '--prompt', 'x', '--tiny', '--out', 'x.mp4', '--teacache', '0.1', '--fbcache', '0.1'],
    'runs': ['calibrate-delta', '--prompts', '1', '--max-time-ratio', '0.5'],
    'demo-out': ['demo', '--out', 'no/such/demo.gif'],
}
for name, argv in cases.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(argv)
            raise AssertionError(name + ': accepted')
        except SystemExit as e:
            assert e.code == 2, (name, e.code)
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith('usage: sr-plugin ') and lines[0].endswith(' [options]'), lines
    assert 'error:' in lines[1], lines
assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'imported'
# a family name is checked against the adapters' registry: torch, but not diffusers nor any model
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
        cli.main(['generate', '--prompt', 'x', '--tiny', '--out', 'x.mp4', '--family', 'hunyuan'])
    except SystemExit as e:
        assert e.code == 2 and "unknown family 'hunyuan'; known: wan, cogvideox" in err.getvalue(), err.getvalue()
assert 'diffusers' not in sys.modules, 'imported'
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=pathlib.Path(__file__).parent
    )  # the installed package, not a checkout's copy
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("family,multiple", [("wan", 16), ("cogvideox", 8)])
def test_a_bad_height_is_refused_before_loading(family, multiple):
    """WanPipeline wants multiples of 16; the trained CogVideoX models (VAE 4x, patch 2) multiples of 8."""
    code, stdout, stderr = main("generate", "--prompt", PROMPT, "--out", "x.mp4", "--height", "36", "--family", family)
    assert code == 2 and f"--height 36: this {family} pipeline takes multiples of {multiple}" in stderr
    assert "loading the models" not in stdout


def test_local_files_only_names_the_missing_folder(tmp_path):
    code, _, stderr = main(
        "generate",
        "--prompt",
        PROMPT,
        "--out",
        str(tmp_path / "x.mp4"),
        "--large",
        str(tmp_path / "nope"),
        "--small",
        str(tmp_path / "nope2"),
        "--local-files-only",
    )
    assert code == 2 and "there is no such folder" in stderr
    assert "Hugging Face Hub (" not in stderr  # not "nor reachable on the Hub"


def test_wording():
    from types import SimpleNamespace

    from sr_plugin.cli.generate import describe_switch
    from sr_plugin.lab.bench import about_minutes
    from sr_plugin.switch.schedule import Schedule, Segment

    assert about_minutes(0.2) == "under a minute" and about_minutes(1.1) == "about 1 minute"
    assert describe_switch(None, [Segment("large", 0, 3)]) == "did not hand over to the small model (ran large 0-2)"
    fixed = SimpleNamespace(step=4, reason="fixed", min_switch_step=4, max_switch_step=4, delta=None, num_steps=10)
    assert describe_switch(fixed, []) == "switched before step 4 of 10 (fixed switch step)"
    with pytest.raises(ValueError, match="delta applies only to the adaptive switch"):
        Schedule.one_switch(0.02, None, None, 3)


def test_timings_the_step_times_do_not_allow_are_called_unreliable():
    from sr_plugin.calibration.delta import step_ratio_doubt
    from sr_plugin.cli.demo import implausible_timing
    from sr_plugin.lab.quality import FamilyResult, ModeSummary

    def summary(mode, speedup, ideal=None):
        return ModeSummary(mode, 0, 0, None, None, 1.0, speedup, ideal, None)

    busy = FamilyResult(
        "wan",
        50,
        None,
        summaries={"large": summary("large", 1.0), "sr": summary("sr", 3.17, 1.94), "small": summary("small", 2.7)},
    )
    busy.step_ratio = 2.69
    assert "unreliable" in implausible_timing(busy) and "above the 1.94x" in implausible_timing(busy)
    quiet = FamilyResult(
        "wan",
        50,
        None,
        summaries={"large": summary("large", 1.0), "sr": summary("sr", 2.0, 2.01), "small": summary("small", 2.7)},
    )
    quiet.step_ratio = 2.69
    assert implausible_timing(quiet) is None
    n = 50
    steady = [(k + 0.3 * (n - k)) / n for k in (10, 12, 14, 16, 18, 20)]
    assert step_ratio_doubt([10, 12, 14, 16, 18, 20], steady, n) is None
    assert "outside (0, 1)" in step_ratio_doubt([10, 12], [1.3, 1.4], n)
    noisy = [r * f for r, f in zip(steady, (0.5, 1.6, 0.6, 1.5, 0.55, 1.7))]
    assert "disagree" in step_ratio_doubt([10, 12, 14, 16, 18, 20], noisy, n)


def test_sr_plugin_traceback_shows_the_traceback_of_every_error(monkeypatch):
    """A user's mistake is one line; with SR_PLUGIN_TRACEBACK=1 it is the whole traceback too (it raises)."""
    import sr_plugin.cli.generate
    from sr_plugin import cli as cli_module

    def refuse(options):
        raise ValueError("a refusal deep inside")

    monkeypatch.setattr(sr_plugin.cli.generate, "generate", refuse)
    args = ["generate", "--prompt", PROMPT, "--out", "x.mp4"]
    monkeypatch.delenv("SR_PLUGIN_TRACEBACK", raising=False)
    assert cli_module.main(args) == 2
    monkeypatch.setenv("SR_PLUGIN_TRACEBACK", "1")
    with pytest.raises(ValueError, match="a refusal deep inside"):
        cli_module.main(args)
    from sr_plugin.cli.outputs import UserError

    with pytest.raises(UserError, match=".mp4"):  # a check at parse time raises too
        cli_module.main(["generate", "--prompt", PROMPT, "--out", "x.gif"])


def test_a_small_model_larger_than_the_large_one_is_warned_about():
    import warnings

    import sr_plugin
    from sr_plugin.lab.tiny import tiny_wan

    pipe, small = tiny_wan()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sr_plugin.apply(pipe, small).remove()  # the right way round: no warning
    large = pipe.transformer
    pipe.transformer = small
    with pytest.warns(UserWarning, match="were the two swapped"):
        sr_plugin.apply(pipe, large)
