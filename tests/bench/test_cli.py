"""The ``inhernet-bench`` command line: what each command prints and writes, one-line errors with a non-zero exit on bad
input, and tracebacks for internal errors (always) and for every error with ``--debug``."""

from __future__ import annotations

import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import test_bench

from cli_runner import invoke as invoke_any
from inhernet_bench import scripts
from inhernet_bench.cli import main as bench_main
from inhernet_bench.presets import registry
from inhernet_bench.presets.registry import PRESETS, Preset


def invoke(monkeypatch, capsys, *args):
    return invoke_any(monkeypatch, capsys, *args, main=bench_main)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from inhernet_bench.cli import main; main()", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )


HELP_OPTIONS = {
    (): ["--debug", "--version", "bench", "plan", "presets", "demo", "methods"],
    ("demo",): ["--budget", "--experts", "--steps", "--out"],
    ("plan",): ["--preset", "--budget", "--experts", "--init", "--allocation", "--calib-size"],
    ("bench",): ["--preset", "--budget", "--seeds", "--steps", "--methods", "--match", "--out", "--json"],
    ("presets",): [],
}


@pytest.mark.parametrize("command", list(HELP_OPTIONS))
def test_help_lists_the_commands_options(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:") and result.stderr == ""
    for option in HELP_OPTIONS[command]:
        assert option in result.stdout, option


@pytest.fixture
def tiny_preset(monkeypatch):
    """bench's synthetic 4-class MLP preset (seconds, no assets), registered for the CLI."""
    preset = Preset(
        "tiny-mlp", "synthetic 4-class MLP", "accuracy", test_bench._teacher, test_bench._data,
        lambda n: [x for x, _ in test_bench._data(batch_size=64)[0]], test_bench._student,
    )
    monkeypatch.setitem(registry.PRESETS, preset.name, preset)
    return preset


def _table_rows(stdout: str) -> dict[str, list[str]]:
    """The rows of a printed rich table, by their first cell."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) > 1 and cells[0]:
            rows[cells[0]] = cells[1:]
    return rows


def test_presets_prints_one_row_per_preset(tiny_preset, monkeypatch, capsys):
    code, stdout, err = invoke(monkeypatch, capsys, "presets")
    assert code == 0 and err == ""
    rows = _table_rows(stdout)
    for preset in PRESETS.values():
        assert rows[preset.name][0] == preset.metric, preset.name
    assert "mnist-cnn" in rows and rows["tiny-mlp"][1] == "synthetic 4-class MLP"


@pytest.mark.filterwarnings("ignore:the plan reaches")
def test_plan_prints_the_table_and_a_summary_within_the_budget(tiny_preset, monkeypatch, capsys):
    code, stdout, err = invoke(monkeypatch, capsys, "plan", "--preset", "tiny-mlp", "--init", "svd", "--budget", 0.5,
                               "--experts", 2)
    assert code == 0, err
    rows = _table_rows(stdout)
    assert {"0", "2", "4"} <= set(rows)  # the three Linear layers of the teacher
    kinds = {rows[n][0] for n in ("0", "2", "4")}
    assert kinds == {"linear"}
    assert any(re.fullmatch(r"\d+/\d+", rows[n][2]) for n in ("0", "2", "4"))  # some layer got a rank r/full
    summary = re.search(r"experts=2, init=svd: ([\d,]+) -> ([\d,]+) parameters \([\d.]+%, target ([\d,]+)\)", stdout)
    assert summary, stdout
    teacher, total, target = (int(g.replace(",", "")) for g in summary.groups())
    assert teacher == sum(p.numel() for p in test_bench._teacher().parameters())
    assert target == int(0.5 * teacher) and total <= target
    saved = sum(int(rows[n][3].replace(",", "")) - int(rows[n][4].replace(",", "")) for n in ("0", "2", "4"))
    assert total == teacher - saved  # the summary adds up the printed rows


def test_bench_tunes_fairly_and_judges_at_constant_lr(tiny_preset, tmp_path, monkeypatch, capsys):
    args = ["bench", "--preset", "tiny-mlp", "--budget", 0.5, "--seeds", 1, "--steps", 8, "--batch-size", 32,
            "--methods", "svd-kd", "--curve-points", 2, "--tune-lr", "--lr-grid", "1e-5,1e-4,1e-3",
            "--lr-extensions", 1, "--schedule", "constant", "--curve-split", "validation", "--patience", 2,
            "--val-examples", 40, "--out", tmp_path]
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert code == 0, err
    result = json.loads((tmp_path / "tiny-mlp-0.5.json").read_text())
    assert result["tuning"]["lr_extensions"] == 1 and result["tuning"]["steps"] == 8  # 25% of 8 steps, at least 10
    assert result["tuning"]["val_examples"] == 40
    assert len(result["tuning"]["methods"]["svd-kd"]["lr_grid"]) in (3, 4)
    assert result["schedule"] == {**result["schedule"], "lr": "constant", "patience": 2}
    assert len(result["methods"][0]["best_points"]) == 1 and result["curve_split"] == "validation"


def test_bench_prints_the_table_and_writes_the_json_and_plot(tiny_preset, tmp_path, monkeypatch, capsys):
    args = ["bench", "--preset", "tiny-mlp", "--budget", 0.5, "--seeds", 1, "--steps", 2, "--batch-size", 32,
            "--methods", "inhernet,kd-student", "--curve-points", 1, "--out", tmp_path]
    code, stdout, err = invoke(monkeypatch, capsys, *args)
    assert code == 0, err
    result = json.loads((tmp_path / "tiny-mlp-0.5.json").read_text())
    assert result["command"].startswith("inhernet-bench bench --preset tiny-mlp --budget 0.5")  # BENCHMARKS.md heads tables with it
    assert (result["preset"], result["budget"], result["metric"]) == ("tiny-mlp", 0.5, "accuracy")
    assert [m["name"] for m in result["methods"]] == ["inhernet", "kd-student"]
    inhernet, student = result["methods"]
    # The InherNet meets the budget; the baseline is sized from it, never smaller.
    assert student["params"] >= inhernet["params"] and inhernet["params"] <= 0.5 * result["teacher"]["params"]
    assert inhernet["seeds"] == [0] and inhernet["steps"] == 2 and 0 <= inhernet["metric_mean"] <= 1
    assert (tmp_path / "tiny-mlp-0.5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _table_rows(stdout)
    assert rows["inhernet"][0].startswith(f"{inhernet['params']:,}") and rows["kd-student"][0].startswith(
        f"{student['params']:,}")
    assert f"wrote {tmp_path / 'tiny-mlp-0.5.json'}" in stdout.replace("\n", "")

    code, _, err = invoke(monkeypatch, capsys, *args, "--json", tmp_path / "elsewhere.json")
    assert code == 0, err
    assert json.loads((tmp_path / "elsewhere.json").read_text())["preset"] == "tiny-mlp"


def test_a_user_error_is_one_line_and_with_debug_a_traceback(monkeypatch, capsys):
    code, _, err = invoke(monkeypatch, capsys, "plan", "--preset", "nope")
    assert code == 2 and err == "error: unknown preset 'nope'; available: " + ", ".join(PRESETS) + "\n"
    with pytest.raises(ValueError, match="unknown preset 'nope'"):  # --debug: the exception propagates
        invoke(monkeypatch, capsys, "--debug", "plan", "--preset", "nope")
    monkeypatch.setenv("INHERNET_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        invoke(monkeypatch, capsys, "plan", "--preset", "nope")


@pytest.mark.parametrize("error", [RuntimeError, KeyError, AttributeError, AssertionError, IndexError])
def test_an_internal_error_keeps_its_traceback(error, monkeypatch, capsys):
    def bug(name):
        raise error("an internal bug")

    monkeypatch.setattr(registry, "get_preset", bug)
    with pytest.raises(error, match="an internal bug"):
        invoke(monkeypatch, capsys, "plan", "--preset", "mnist-cnn")


def test_tracebacks_reach_the_terminal():
    """As a process: a bug prints its traceback (exit 1); bad input one line (exit 2), or, with --debug, its traceback."""
    bug = (
        "import inhernet_bench.presets.registry as r\n"
        "def boom(name): raise RuntimeError('an internal bug')\n"
        "r.get_preset = boom\n"
        "from inhernet_bench.cli import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", bug, "plan"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert result.stderr.rstrip().endswith("RuntimeError: an internal bug")
    result = run("--debug", "plan", "--preset", "nope")
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert result.stderr.rstrip().endswith("ValueError: unknown preset 'nope'; available: " + ", ".join(PRESETS))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "--preset", "nope"], "unknown preset 'nope'"),
        (["bench", "--preset", "nope"], "unknown preset 'nope'"),
        (["plan", "--budget", "0"], "--budget"),
        (["bench", "--budget", "-1"], "--budget"),
        (["plan", "--init", "svd", "--budget", "0.001"], "smallest reachable"),
        (["bench", "--steps", "5", "--epochs", "1"], "not both"),
        (["bench", "--match", "latency", "--budget", "2"], "fraction in (0, 1] of the teacher's measured latency"),
        (["bench", "--tune-lr", "--lr-grid", "1e-3,x"], "--lr-grid"),
        (["bench", "--tune-lr", "--lr-grid", "1e-3,3e-3"], "lr_grid"),
        (["bench", "--schedule", "constant"], "curve_split='validation'"),
        (["bench", "--patience", "3"], "needs schedule='constant'"),
        (["bench", "--preset", "smollm2-bbc", "--methods", "inhernet,inhernet-prune"], "leaves out 'inhernet-prune'"),
    ],
)
def test_bad_arguments_fail_with_one_clear_line(args, message):
    result = run(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_asset_names_the_install_step(tmp_path):
    import os

    env = dict(os.environ, INHERNET_HOME=str(tmp_path / "empty"))
    result = run("demo", "--steps", "1", env=env)  # the MNIST files are missing under this home
    assert result.returncode != 0
    assert "make assets" in result.stderr
    assert "Traceback" not in result.stderr


SCRIPTS = sorted(p.stem for p in Path(scripts.__file__).parent.glob("*.py") if p.stem != "__init__")


def test_every_script_answers_help_and_writes_under_the_repositorys_results(monkeypatch, capsys):
    """``python -m inhernet_bench.scripts.NAME --help`` runs for every script, and their default output
    folder is the repository's benchmarks/results/ whatever the working directory."""
    assert scripts.RESULTS.relative_to(Path(__file__).resolve().parents[2]) == Path("benchmarks", "results")
    assert scripts.shown(scripts.RESULTS / "x.md") == str(Path("benchmarks", "results", "x.md"))
    assert len(SCRIPTS) >= 10
    for name in SCRIPTS:
        monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
        with pytest.raises(SystemExit) as stop:
            runpy.run_module(f"inhernet_bench.scripts.{name}", run_name="__main__")
        assert stop.value.code == 0, name
        assert capsys.readouterr().out.startswith("usage:"), name
