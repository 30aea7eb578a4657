"""``inhernet_bench.scripts.experts_sweep --split validation``: the experts default judged on validation data,
with a verdict against h = 1 that says "better" only beyond 2 s.e. of the difference."""

from __future__ import annotations

import json

import pytest

from benchmark_scripts import load_benchmark

experts_sweep = load_benchmark("experts_sweep")


def result(ends: list[float], higher: bool = True) -> dict:
    """A sweep row's bench result: one inhernet run per seed, each curve ending at ``ends[seed]``."""
    runs = [{"curve_end": end} for end in ends]
    method = {"params": 100, "macs": 1000, "ranks": {"a": 4, "b": 6}, "sec_per_step": 0.01, "per_seed": runs}
    return {"methods": [method], "higher_is_better": higher}


def verdicts(lines: list[str]) -> dict[str, str]:
    return {line.split("|")[1].strip(): line.split("|")[6].strip() for line in lines[2:]}


def test_a_verdict_beyond_two_standard_errors_only():
    rows = [(1, result([0.90, 0.91, 0.92])), (2, result([0.905, 0.915, 0.925])), (3, result([0.80, 0.81, 0.82]))]
    lines = experts_sweep.validation_rows(rows, "accuracy", None)
    assert verdicts(lines) == {"1": "", "2": "tie", "3": "worse"}
    assert "0.9100 ± 0.0058" in lines[2]  # mean and s.e. of the seeds' ends: 0.01 / sqrt(3)
    assert "| 5.0 |" in lines[2]  # the mean rank


def test_the_validation_sets_binomial_error_can_turn_a_win_into_a_tie():
    rows = [(1, result([0.90, 0.90, 0.90])), (2, result([0.91, 0.91, 0.91]))]
    assert verdicts(experts_sweep.validation_rows(rows, "accuracy", None))["2"] == "better"  # no spread, no error
    assert verdicts(experts_sweep.validation_rows(rows, "accuracy", 500))["2"] == "tie"  # 500 examples: +-1.3 pts


def test_lower_is_better_for_a_perplexity():
    rows = [(1, result([30.0, 30.1, 29.9], higher=False)), (2, result([25.0, 25.1, 24.9], higher=False))]
    assert verdicts(experts_sweep.validation_rows(rows, "perplexity", None))["2"] == "better"


@pytest.mark.assets
def test_a_validation_sweep_writes_its_table_beside_the_test_one(tmp_path):
    out = tmp_path / "experts"
    argv = ["--preset", "mnist-cnn", "--experts", "1", "2", "--seeds", "1", "--steps", "2", "--split", "validation",
            "--out", str(out)]
    assert experts_sweep.main(argv) == 0
    table = (tmp_path / "experts_sweep-mnist-cnn-0.1-validation.md").read_text()
    assert "validation accuracy at the end" in table and "--split validation" in table
    for h in (1, 2):
        run = json.loads((out / f"mnist-cnn-0.1-h{h}-validation.json").read_text())
        assert run["curve_split"] == "validation"
