"""The command line: help, and one-line errors with a non-zero exit on bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from inhernet.cli import main; main()", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )


@pytest.mark.parametrize("command", [[], ["demo"], ["plan"], ["bench"], ["presets"]])
def test_help_works(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_presets_lists_mnist():
    result = run("presets")
    assert result.returncode == 0 and "mnist-cnn" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "--preset", "nope"], "unknown preset 'nope'"),
        (["bench", "--preset", "nope"], "unknown preset 'nope'"),
        (["plan", "--budget", "0"], "--budget"),
        (["bench", "--budget", "-1"], "--budget"),
        (["plan", "--init", "svd", "--budget", "0.001"], "smallest reachable"),
        (["bench", "--steps", "5", "--epochs", "1"], "not both"),
        (["bench", "--tune-lr", "--lr-grid", "1e-3,x"], "--lr-grid"),
        (["bench", "--tune-lr", "--lr-grid", "1e-3,3e-3"], "lr_grid"),
        (["bench", "--preset", "smollm2-bbc", "--methods", "inhernet,prune-kd"], "leaves out 'prune-kd'"),
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
