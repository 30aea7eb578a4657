"""inhernet_bench.curves: the learning curves with s.e. bands and the steps to 95% / 99% of the teacher, on a
synthetic result with known curves and on a committed benchmark result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from matplotlib.collections import PolyCollection

from cli_runner import invoke
from inhernet_bench.cli import main as bench_main
from inhernet_bench.curves import curves_figure, load_curves, reach_table, target, write_curves

REPO = Path(__file__).resolve().parents[2]

#: per method, one curve per seed; the teacher scores 1.0, so 95% is >= 0.95 and 99% is >= 0.99
CURVES = {
    "fast": [[[0, 0.5], [10, 0.96], [100, 0.995], [1000, 1.0]], [[0, 0.5], [10, 0.9], [100, 0.96], [1000, 0.999]]],
    "slow": [[[0, 0.1], [10, 0.5], [100, 0.95], [1000, 0.991]], [[0, 0.1], [10, 0.4], [100, 0.8], [1000, 0.94]]],
    "alone": [[[0, 0.2], [10, 0.3], [100, 0.6], [1000, 0.7]]],
}


def _write(tmp_path: Path, curves: dict[str, Any] = CURVES, higher: bool = True, teacher: float = 1.0) -> Path:
    """A result JSON under ``results/`` and its parts under ``parts/<stem>``, as a bench run lays them out."""
    result = {
        "preset": "toy", "budget": 0.5, "steps": 1000, "metric": "accuracy" if higher else "perplexity",
        "higher_is_better": higher, "teacher": {"params": 10, "macs": 10, "metric": teacher, "digest": "abc"},
        "methods": [
            {"name": name, "seeds": list(range(len(runs))), "steps": 1000, "curve": runs[0]} for name, runs in curves.items()
        ],
    }
    path = tmp_path / "results" / "toy-0.5.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result))
    parts = tmp_path / "parts" / "toy-0.5"
    parts.mkdir(parents=True)
    fingerprint = {"preset": "toy", "budget": 0.5, "steps": 1000, "teacher": "abc", "recipe": {}}
    for name, runs in curves.items():
        for seed, curve in enumerate(runs):
            part = {"fingerprint": fingerprint, "data": {"seed": seed, "curve": curve}}
            (parts / f"{name}--seed{seed}.json").write_text(json.dumps(part))
    return path


def _rows(table: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]
    return {r[0]: r[1:] for r in rows[2:]}  # past the head and its rule


def test_the_steps_to_95_and_99_percent_are_the_mean_over_seeds_of_each_seed_first_step(tmp_path):
    result, curves = load_curves(_write(tmp_path))
    rows = _rows(reach_table(result, curves))
    # fast: seeds reach 0.95 at 10 and 100 (mean 55, s.e. stdev 63.64 / sqrt 2 = 45); 0.99 at 100 and 1000
    assert rows["fast"] == ["2 seeds", "0.5000", "55 ± 45", "550 ± 450"]
    # slow: 0.95 at 100 and never; 0.99 at 1000 and never
    assert rows["slow"] == ["2 seeds", "0.1000", "not reached (1/2 seeds)", "not reached (1/2 seeds)"]
    assert rows["alone"] == ["1 seed", "0.2000", "not reached", "not reached"]
    assert "steps to 95% (>= 0.9500)" in reach_table(result, curves)


def test_for_a_perplexity_reaching_means_at_most_the_teacher_over_the_fraction(tmp_path):
    assert target(20.0, 0.95, higher=False) == pytest.approx(20 / 0.95)
    runs = {"lm": [[[0, 40.0], [10, 21.0], [100, 20.1]], [[0, 40.0], [10, 22.0], [100, 20.3]]]}
    result, curves = load_curves(_write(tmp_path, runs, higher=False, teacher=20.0))
    table = reach_table(result, curves)
    # <= 21.05: steps 10 and 100; <= 20.20: step 100 and never
    assert _rows(table)["lm"][2:] == ["55 ± 45", "not reached (1/2 seeds)"]
    assert "steps to 95% (<= 21.0526)" in table


def test_bands_are_drawn_for_methods_of_two_seeds_or_more(tmp_path):
    result, curves = load_curves(_write(tmp_path))
    fig = curves_figure(result, curves)
    for ax in fig.axes:
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2  # fast and slow; alone has one seed
    assert [c.band()[1] is None for c in curves] == [False, False, True]


def test_the_png_and_table_are_written_and_the_same_result_draws_the_same_bytes(tmp_path):
    path = _write(tmp_path)
    png, table = write_curves(path, tmp_path / "a")
    again, _ = write_curves(path, tmp_path / "b")
    assert png.name == "toy-0.5-curves.png" and table.name == "toy-0.5-curves.md"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert png.read_bytes() == again.read_bytes()


def test_without_parts_each_method_has_its_mean_curve_alone(tmp_path):
    path = _write(tmp_path)
    older = json.loads(path.read_text())
    del older["steps"]  # older results name the steps per method only
    path.write_text(json.dumps(older))
    for part in (tmp_path / "parts" / "toy-0.5").glob("fast--*.json"):
        part.unlink()
    result, curves = load_curves(path)
    fast = curves[0]
    assert not fast.from_parts and fast.runs == (tuple((s, v) for s, v in CURVES["fast"][0]),)
    assert _rows(reach_table(result, curves))["fast"][:1] == ["mean curve (no parts)"]
    assert curves[1].from_parts and "1,000 KD steps" in reach_table(result, curves)


@pytest.mark.parametrize("key, value", [("teacher", "other"), ("match", "macs"), ("curve_split", "validation")])
def test_parts_of_another_run_or_a_missing_parts_folder_are_refused(tmp_path, key, value):
    path = _write(tmp_path)
    part = tmp_path / "parts" / "toy-0.5" / "fast--seed0.json"
    data = json.loads(part.read_text())
    data["fingerprint"][key] = value
    part.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="--parts"):
        load_curves(path)
    with pytest.raises(ValueError, match="parts must be"):
        load_curves(path, tmp_path / "nowhere")


def test_a_committed_result_is_drawn_from_its_parts_whose_mean_is_the_result_curve(tmp_path, monkeypatch, capsys):
    path = REPO / "benchmarks" / "results" / "mnist-cnn-0.1-5ep.json"
    result, curves = load_curves(path)
    for method, curve in zip(result["methods"], curves, strict=True):
        assert curve.from_parts and len(curve.runs) == len(method["seeds"]) == 3
        assert curve.steps == [s for s, _ in method["curve"]]
        assert curve.band()[0] == pytest.approx([v for _, v in method["curve"]])
    code, out, _ = invoke(monkeypatch, capsys, "curves", path, "--out", tmp_path, main=bench_main)
    assert code == 0, out
    assert (tmp_path / "mnist-cnn-0.1-5ep-curves.png").stat().st_size > 10_000
    rows = _rows((tmp_path / "mnist-cnn-0.1-5ep-curves.md").read_text())
    assert list(rows) == [m["name"] for m in result["methods"]]
    assert "curves on the test split" in out
