"""The command line, driven as a user would: in a subprocess, checking the files it writes and its errors."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import sr_plugin

#: The console script, as a user runs it: the installed package (`python -m sr_plugin` in a checkout would put
#: the checkout's sr_plugin/ first on the path instead).
CLI = [str(pathlib.Path(sys.executable).parent / "sr-plugin")]
#: The trained families' folders, as installed.
TRAINED = pathlib.Path(sr_plugin.__file__).parent / "trained"


def cli(*args: str, env: dict[str, str] | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_generate_writes_the_video_the_trace_and_the_plot(tmp_path: pathlib.Path):
    out = tmp_path / "fox.mp4"
    result = cli(
        "generate",
        "--prompt",
        "a fox runs in the snow",
        "--out",
        str(out),
        "--steps",
        "6",
        "--switch-step",
        "2",
        "--teacache",
        "1.5",
        "--family",
        "cogvideox",
        "--tiny",
    )
    assert result.returncode == 0, result.stderr
    assert "RANDOM" in result.stdout  # says plainly that the tiny pair's weights are random
    assert "small transformer" in result.stderr  # the progress bar shows which model is running

    import imageio.v3 as iio

    frames = iio.imread(out)
    assert frames.shape[0] == 9 and frames.shape[-1] == 3  # 9 frames of the tiny CogVideoX call

    record = json.loads(out.with_suffix(".trace.json").read_text())
    assert record["switch_step"] == 2 and record["num_inference_steps"] == 6
    assert [r["model"] for r in record["trace"]] == ["large"] * 2 + ["small"] * 4
    assert record["trace"][0]["d"] is None and record["trace"][3]["s"] is not None
    assert record["accelerations"] and record["weights"].startswith("random")

    png = out.with_suffix(".switch.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_help_is_complete():
    top = cli("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("demo", "generate", "bench"))
    gen = cli("generate", "--help").stdout
    for option in (
        "--prompt",
        "--large",
        "--small",
        "--family",
        "--delta",
        "--switch-step",
        "--steps",
        "--teacache",
        "--pab",
        "--compile",
        "--seed",
        "--out",
        "--tiny",
    ):
        assert option in gen, option


@pytest.mark.parametrize(
    "args,message",
    [
        (["generate", "--prompt", "x", "--out", "x.mp4", "--delta", "1.5"], "open interval"),
        (["generate", "--prompt", "x", "--out", "x.mp4", "--delta", "0.1", "--switch-step", "3"], "not allowed with"),
        (["generate", "--prompt", "x", "--out", "x.mp4", "--switch-step", "-1"], ">= 0"),
        (["generate", "--prompt", "x", "--out", "x.mp4", "--steps", "0"], "between 1 and 1000"),
        (["generate", "--prompt", "x", "--out", "x.mp4", "--teacache", "-1"], ">= 0"),
        (["generate", "--prompt", "x", "--out", "x.gif"], ".mp4"),
        (["generate", "--prompt", "x", "--out", "x.mp4", "--large", "/no/such/folder"], "both --large and --small"),
        (
            ["generate", "--prompt", "x", "--out", "x.mp4", "--large", "/no/such/folder", "--small", "/no/small"],
            "cannot load the large model",
        ),
        (
            ["generate", "--prompt", "x", "--out", "x.mp4", "--large", "nobody/no-such-model", "--small", "nobody/x"],
            "the Hub cannot be reached (offline)",
        ),
        (["generate", "--out", "x.mp4"], "--prompt"),
        (["generate", "--prompt", "a purple fox moving left", "--out", "x.mp4"], "The vocabulary is: a, moving, and"),
        (
            [
                "generate",
                "--prompt",
                "a red square moving left and a blue circle moving up",
                "--out",
                "x.mp4",
                "--family",
                "hunyuan",
            ],
            "unknown family 'hunyuan'; known: wan, cogvideox",
        ),
        (
            ["generate", "--prompt", "a red square moving left and a blue circle moving up", "--out", "no/dir/x.mp4"],
            "does not exist",
        ),
        (["demo", "--out", "no/dir/demo.gif"], "does not exist"),
        (["demo", "--out", "demo.mp4"], ".gif"),
        (["demo", "--family", "hunyuan"], "invalid choice"),
        (["demo", "--prompts", "65"], "between 1 and 64"),
        (["calibrate-delta"], "one of the arguments --min-ssim --max-time-ratio is required"),
        (["calibrate-delta", "--min-ssim", "0"], "in (0, 1]"),
        (["calibrate-delta", "--max-time-ratio", "0.5", "--deltas", "1.5"], "open interval"),
        (["calibrate-delta", "--max-time-ratio", "0.5", "--check-prompts", "65"], "between 0 and 64"),
        (["bench", "--configs", "turbo"], "invalid choice"),
        (
            ["generate", "--prompt", "x", "--out", "x.mp4", "--tiny", "--device", "cuda:7"],
            "--device cuda:7: this machine has",
        ),
        (["generate", "--prompt", "x", "--out", "x.mp4", "--tiny", "--device", "gpu0"], "is not a device"),
        (["generate", "--prompt", "x", "--out", "x.mp4", "--tiny", "--dtype", "int8"], "invalid choice"),
        (["bench", "--family", "hunyuan"], "unknown family 'hunyuan' for the tiny benchmark"),
        (
            ["generate", "--prompt", "x", "--out", "x.mp4", "--tiny", "--schedule", "small:0,large"],
            "--schedule: schedule segment 1 (small): ends at step 0, so the segment is empty",
        ),
        (
            ["generate", "--prompt", "x", "--out", "x.mp4", "--tiny", "--schedule", "small:3,large", "--delta", "0.1"],
            "not allowed with",
        ),
        (
            [
                "generate",
                "--prompt",
                "x",
                "--out",
                "x.mp4",
                "--tiny",
                "--schedule",
                "small:3,large",
                "--min-switch-step",
                "2",
            ],
            "has none",
        ),
        (["calibrate", "--schedules", "tiny:3,large"], "unknown role 'tiny'"),
        (["calibrate", "--prompt", "a fox"], "--prompt and --min-ssim go with --large/--small"),
        (["calibrate", "--large", "some/folder"], "both --large and --small"),
        (["calibrate", "--json", "report.txt"], ".json"),
        (["calibrate", "--grid", "huge"], "invalid choice"),
        (["calibrate", "--pairs", "65"], "between 1 and 64"),
        # what a new user ran into: each refused at parse time, before any model loads, with the usage line
        (
            [
                "generate",
                "--prompt",
                "x",
                "--out",
                "x.mp4",
                "--large",
                str(TRAINED / "wan" / "large"),
                "--small",
                str(TRAINED / "wan" / "small"),
                "--family",
                "cogvideox",
            ],
            "--family cogvideox does not match --large, a WanPipeline",
        ),
        (
            ["generate", "--prompt", "x", "--out", "x.mp4", "--small", str(TRAINED / "wan" / "small")],
            "give both --large and --small",
        ),
        (
            ["generate", "--prompt", "x", "--out", "x.mp4", "--tiny", "--large", "a/b", "--small", "c/d"],
            "--tiny runs the built-in random pair",
        ),
        (
            ["generate", "--prompt", "x", "--out", "x.mp4", "--tiny", "--height", "33"],
            "--height 33: this wan pipeline takes multiples of 16",
        ),
        (
            ["generate", "--prompt", "x", "--out", "x.mp4", "--tiny", "--device", "cuda"],
            "this machine has 0 CUDA device(s)",
        ),
        (["bench", "--family", "flux"], "unknown family 'flux' for the tiny benchmark"),
        (["generate", "--prompt", "x", "--out", "x.mp4", "--tiny", "--steps", "100000000"], "between 1 and 1000"),
        (["demo", "--steps", "5000"], "between 1 and 1000"),
        (
            [
                "generate",
                "--prompt",
                "x",
                "--out",
                "x.mp4",
                "--large",
                str(TRAINED / "wan" / "large"),
                "--small",
                str(TRAINED / "wan" / "large"),
            ],
            "--large and --small name the same model",
        ),
        (["generate", "--prompt", "x", "--out", "", "--tiny"], "--out is empty"),
        (
            [
                "generate",
                "--prompt",
                "x",
                "--out",
                "x.mp4",
                "--large",
                str(TRAINED / "wan"),
                "--small",
                str(TRAINED / "wan" / "small"),
            ],
            "is a folder without model_index.json",
        ),
        (
            ["generate", "--prompt", "x", "--out", "x.mp4", "--tiny", "--delta", "abc"],
            "must be a number in the open interval (0, 1), got 'abc'",
        ),
        (
            ["generate", "--prompt", "a red square moving left and a blue circle moving up.", "--out", "x.mp4"],
            "'up.' (the task has no punctuation)",
        ),
    ],
)
def test_bad_arguments_get_a_clear_message_and_a_nonzero_exit(tmp_path, args, message):
    result = subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "loading the models" not in result.stdout or "cannot load" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_generate_follows_a_schedule_and_reports_its_segments(tmp_path: pathlib.Path):
    out = tmp_path / "sandwich.mp4"
    result = cli(
        "generate",
        "--prompt",
        "a fox",
        "--out",
        str(out),
        "--steps",
        "6",
        "--tiny",
        "--schedule",
        "small:2,large:4,small",
    )
    assert result.returncode == 0, result.stderr
    assert "ran small 0-1, large 2-3, small 4-5" in result.stdout
    record = json.loads(out.with_suffix(".trace.json").read_text())
    assert record["rule"] == {"schedule": "small:2,large:4,small"}
    assert [r["model"] for r in record["trace"]] == ["small"] * 2 + ["large"] * 2 + ["small"] * 2
    assert [(s["role"], s["first_step"], s["end_step"]) for s in record["segments"]] == [
        ("small", 0, 2),
        ("large", 2, 4),
        ("small", 4, 6),
    ]


def test_calibrate_writes_its_report_and_plot(tmp_path: pathlib.Path):
    report, plot = tmp_path / "calibration.json", tmp_path / "calibration.png"
    result = cli(
        "calibrate",
        "--family",
        "cogvideox",
        "--pairs",
        "1",
        "--steps",
        "6",
        "--schedules",
        "small:2,large",
        "large:2,small:4,large",
        "--tolerance",
        "100",
        "--confirm",
        "--json",
        str(report),
        "--plot",
        str(plot),
    )
    assert result.returncode == 0, result.stderr
    assert "2 candidates on 1 pairs, 6 steps, fastest search" in result.stdout
    assert "step costs here" in result.stdout and "model steps" in result.stdout  # the cost, before the videos
    data = json.loads(report.read_text())
    assert [r["name"] for r in data["rows"]] == ["large", "small:2,large", "large:2,small:4,large"]
    from sr_plugin.lab import task

    assert data["pairs"] == [list(p) for p in task.validation(1)]
    ((prompt, seed),) = task.validation(1)
    assert data["chosen"] is not None and data["closest"] is None  # a floor of 100 points: every candidate holds it
    # --confirm: the choice rerun on the same prompt with a new seed, where (floor 100) it holds again
    assert data["confirmation"]["pairs"] == [[prompt, seed + 500_000]]
    assert [r["name"] for r in data["confirmation"]["rows"]] == ["large", data["chosen"]]
    assert data["confirmation"]["chosen"] == data["chosen"] and "confirmed on new pairs" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_prints_the_matrix_table():
    result = cli(
        "bench", "--family", "wan", "--configs", "baseline", "sr", "sr+teacache", "--steps", "4", "--rounds", "1"
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("wan ")]
    assert [row.split()[1] for row in rows] == ["baseline", "sr", "sr+teacache"]
    assert "switch at 3" in rows[1] and "TeaCache skipped" in rows[2]


def test_generate_uses_the_trained_family_by_default(tmp_path: pathlib.Path):
    out = tmp_path / "shapes.mp4"
    result = cli(
        "generate",
        "--prompt",
        "a red square moving left and a blue circle moving up",
        "--out",
        str(out),
        "--steps",
        "8",
        "--switch-step",
        "4",
    )
    assert result.returncode == 0, result.stderr
    assert "trained wan family" in result.stdout
    import imageio.v3 as iio

    frames = iio.imread(out)
    assert frames.shape[:3] == (9, 32, 32)
    record = json.loads(out.with_suffix(".trace.json").read_text())
    assert record["weights"].startswith("trained") and record["switch_step"] == 4


def test_demo_writes_the_side_by_side_gif_and_the_table(tmp_path: pathlib.Path):
    gif = tmp_path / "demo.gif"
    result = cli("demo", "--family", "cogvideox", "--prompts", "1", "--steps", "8", "--out", str(gif))
    assert result.returncode == 0, result.stderr
    assert "| cogvideox | sr |" in result.stdout and "prompt accuracy" in result.stdout
    from sr_plugin.lab import trained

    schedule = trained.calibrated("cogvideox")["schedule"]  # the calibrated schedule shipped beside the family
    assert f"| cogvideox | schedule {schedule} |" in result.stdout
    import imageio.v3 as iio

    frames = iio.imread(gif)
    assert frames.shape[0] == 9 and frames.shape[2] >= 4 * 128  # four 32-pixel clips zoomed 4x, side by side
    assert [p.name for p in tmp_path.iterdir()] == ["demo.gif"]  # no temporary file left behind


def test_console_script_is_installed():
    script = pathlib.Path(sys.executable).parent / "sr-plugin"
    assert script.exists()
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "generate" in result.stdout


def test_help_and_argument_errors_import_neither_torch_nor_diffusers():
    """`sr-plugin --help` took 8 s when torch was imported before parsing."""
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\nfrom sr_plugin import cli\n"
        "for argv in (['--help'], ['--version'], ['generate', '--help'], ['demo', '--steps', '0']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()), "
        "contextlib.redirect_stderr(io.StringIO()):\n        cli.main(argv)\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=pathlib.Path(__file__).parent
    )  # the installed package, not a checkout's copy
    assert result.returncode == 0, result.stderr[-2000:]
    from sr_plugin.adapters import family_keys
    from sr_plugin.lab import shipped
    from sr_plugin.lab.bench import ACCELERATIONS
    from sr_plugin.lab.bench_configs import ACCELERATION_NAMES

    folders = {p.name for p in shipped.ROOT.iterdir() if (p / "large" / "model_index.json").is_file()}
    assert set(shipped.FAMILY_NAMES) == folders and set(folders) <= set(family_keys())
    assert tuple(ACCELERATIONS) == ACCELERATION_NAMES


def test_version(capsys):
    import sr_plugin
    from sr_plugin import cli

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"sr-plugin {sr_plugin.__version__}"


def test_an_error_inside_the_run_is_one_line_not_a_traceback(monkeypatch, capsys):
    import sr_plugin.cli.generate
    from sr_plugin import cli

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore detail")

    monkeypatch.setattr(sr_plugin.cli.generate, "generate", broken)
    monkeypatch.delenv("SR_PLUGIN_TRACEBACK", raising=False)
    assert cli.main(["generate", "--tiny", "--prompt", "a fox", "--out", "x.mp4"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "sr-plugin: the run failed: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB "
        "(set SR_PLUGIN_TRACEBACK=1 for the traceback)"
    )
    monkeypatch.setenv("SR_PLUGIN_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        cli.main(["generate", "--tiny", "--prompt", "a fox", "--out", "x.mp4"])


def test_generate_flags_reach_the_run(monkeypatch):
    import sr_plugin.cli.generate
    from sr_plugin import cli

    seen = {}
    monkeypatch.setattr(sr_plugin.cli.generate, "generate", lambda *a, **kw: seen.update(args=a, kwargs=kw))
    # a prompt of the trained family's task: the vocabulary is checked at parse time, before `generate` runs
    assert (
        cli.main(
            [
                "generate",
                "--prompt",
                "a red square moving left and a blue circle moving up",
                "--out",
                "x.mp4",
                "--negative-prompt",
                "blurry",
                "--guidance-scale",
                "4.5",
                "--fps",
                "12",
                "--fbcache",
                "0.2",
                "--min-switch-step",
                "4",
                "--max-switch-step",
                "9",
            ]
        )
        == 0
    )
    options = seen["args"][0]
    assert {
        k: getattr(options, k)
        for k in ("negative_prompt", "guidance_scale", "fps", "fbcache", "min_switch_step", "max_switch_step")
    } == {
        "negative_prompt": "blurry",
        "guidance_scale": 4.5,
        "fps": 12,
        "fbcache": 0.2,
        "min_switch_step": 4,
        "max_switch_step": 9,
    }


def test_a_pair_of_two_families_is_refused_before_loading(tmp_path):
    """Local folders: the families are read from their configs; nothing is loaded when they disagree."""
    import json as _json

    from sr_plugin.cli.generate_checks import UserError, check_local_pair

    wan, cog = tmp_path / "wan", tmp_path / "cog"
    for folder, pipeline, transformer in (
        (wan, "WanPipeline", "WanTransformer3DModel"),
        (cog, "CogVideoXPipeline", "CogVideoXTransformer3DModel"),
    ):
        (folder / "transformer").mkdir(parents=True)
        (folder / "model_index.json").write_text(_json.dumps({"_class_name": pipeline}))
        (folder / "transformer" / "config.json").write_text(_json.dumps({"_class_name": transformer}))
    check_local_pair(str(wan), str(wan), None)
    with pytest.raises(
        UserError, match="is a CogVideoXTransformer3DModel, but the pipeline needs a WanTransformer3DModel"
    ):
        check_local_pair(str(wan), str(cog), None)
    with pytest.raises(
        UserError, match="is a WanTransformer3DModel, but the pipeline needs a CogVideoXTransformer3DModel"
    ):
        check_local_pair(str(cog), str(wan), None)
    with pytest.raises(UserError, match="--family wan does not match --large, a CogVideoXPipeline"):
        check_local_pair(str(cog), str(cog), "wan")
    with pytest.raises(UserError, match="has no transformer config"):
        check_local_pair(str(wan), str(tmp_path), None)


def test_help_shows_the_defaults():
    result = cli("generate", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--seed SEED seed of the initial noise" in text and "(default: 0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    bench = " ".join(cli("bench", "--help").stdout.split())
    assert "(default: 10)" in bench and "paired with a round of the unpatched pipeline" in bench


def test_generate_on_a_trained_family_runs_its_shipped_calibrated_schedule_unless_told_otherwise(tmp_path):
    from sr_plugin.lab import shipped

    out = tmp_path / "shapes.mp4"
    prompt = "a red square moving left and a blue circle moving up"
    result = cli("generate", "--prompt", prompt, "--out", str(out), "--steps", "20")
    assert result.returncode == 0, result.stderr
    record = json.loads(out.with_suffix(".trace.json").read_text())
    assert record["rule"] == {"schedule": shipped.shipped_schedule("wan")}
    assert f"its shipped calibrated schedule {shipped.shipped_schedule('wan')}" in result.stdout
    result = cli("generate", "--prompt", prompt, "--out", str(out), "--steps", "20", "--delta", "0.01")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.with_suffix(".trace.json").read_text())["rule"] == {"delta": 0.01}
    assert "shipped calibrated schedule" in cli("generate", "--help").stdout


def test_a_step_count_the_shipped_schedule_cannot_run_is_refused_before_loading():
    from sr_plugin.lab import shipped

    schedule = shipped.shipped_schedule("wan")
    need = shipped.min_steps(schedule)
    for argv in (
        ["demo", "--family", "wan", "--steps", "3"],
        [
            "generate",
            "--prompt",
            "a red square moving left and a blue circle moving up",
            "--out",
            "x.mp4",
            "--steps",
            "3",
        ],
    ):
        result = cli(*argv)
        assert result.returncode == 2
        assert f"shipped calibrated schedule {schedule}, whose segments need at least {need} steps" in result.stderr
        assert f"give --steps {need} or more" in result.stderr and "loading" not in result.stdout
