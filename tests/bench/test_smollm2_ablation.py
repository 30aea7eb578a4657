"""inhernet_bench.scripts.smollm2_zero_shot: its resume bookkeeping and the spectra it shares between cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tiny_models as tm
from benchmark_scripts import load_benchmark
from inhernet import InherConfig, evaluate, inherit


@pytest.fixture(scope="module")
def ablation():
    return load_benchmark("smollm2_zero_shot")


def _cell(ablation, budget: float, row: str, calib: int, test: int = 128, **extra) -> dict:
    key = ablation.cell_key(budget, row, calib, test, ablation.ROWS[row][1])
    return {"key": key, "budget": budget, "row": row, "calib_blocks": calib, "test_blocks": test, **extra}


def test_rerun_skips_measured_cells_and_remeasures_changed_rows(ablation, monkeypatch: pytest.MonkeyPatch) -> None:
    result = {"teacher": {}, "cells": [_cell(ablation, 0.8, "floor", 32)]}
    todo = ablation.pending(result, [0.8], ["one-pass", "floor"], [128, 32], 128)
    assert todo == [(0.8, "one-pass", 32), (0.8, "one-pass", 128), (0.8, "floor", 128)]  # small calibration first
    # Other test blocks or budget: not the same cell.
    assert (0.8, "floor", 32) in ablation.pending(result, [0.8], ["floor"], [32], 16)
    assert ablation.pending(result, [0.86], ["floor"], [32], 128) == [(0.86, "floor", 32)]
    # A row whose options change is measured anew.
    monkeypatch.setitem(ablation.ROWS, "floor", ("+ floor", {**ablation.ROWS["floor"][1], "min_rank_ratio": 0.3}))
    assert ablation.pending(result, [0.8], ["floor"], [32], 128) == [(0.8, "floor", 32)]


def test_cells_are_replaced_not_duplicated_and_the_file_round_trips(ablation, tmp_path: Path) -> None:
    result = ablation.load_result(tmp_path / "none.json")
    assert result["cells"] == [] and result["teacher"] == {}
    ablation.add_cell(result, _cell(ablation, 0.8, "loss", 32, perplexity=90.0, ratio_to_teacher=2.2, inherit_s=50))
    ablation.add_cell(result, _cell(ablation, 0.8, "loss", 32, perplexity=80.0, ratio_to_teacher=1.95, inherit_s=51))
    ablation.add_cell(result, _cell(ablation, 0.8, "loss", 512, error="budget unreachable"))
    assert [c["perplexity"] for c in result["cells"] if "perplexity" in c] == [80.0]
    result["teacher"]["128"] = {"perplexity": 41.0}
    ablation.save(tmp_path, result)
    again = ablation.load_result(tmp_path / f"{ablation.RESULT}.json")
    assert again == json.loads(json.dumps(result))
    assert ablation.pending(again, [0.8], ["loss"], [32, 512], 128) == []  # errors are not retried
    table = (tmp_path / f"{ablation.RESULT}.md").read_text()
    assert "80.00 (1.95x, 51 s)" in table and "teacher 41.00" in table and "n/a (budget unreachable)" in table
    assert "| 0.8 | + allocation by truncation loss |" in table and "4k calibration tokens" in table
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a smollm2-zero-shot result"):
        ablation.load_result(tmp_path / "bad.json")


def test_shared_spectra_give_the_same_students_and_count_the_reused_time(
    ablation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cells that reuse the teacher's spectra inherit exactly what a lone inherit() builds, and report the
    reused seconds in their inherit time; the patch is undone by close()."""
    import inhernet.pipeline as pipeline

    teacher, batch = tm.llama_tiny()
    calib = [batch, batch.flip(0)]
    test = [{"input_ids": batch, "labels": batch}]
    lone = {}
    for row in ("sequential", "loss"):
        student = inherit(teacher, InherConfig(budget=0.8, experts=1, drop_blocks=0, **ablation.ROWS[row][1]), calib=calib,
                          progress=False)
        lone[row] = evaluate(student, test, "perplexity")["perplexity"]
    computed = {"n": 0}
    real = pipeline.measure

    def counting(*args, **kwargs):
        computed["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "measure", counting)
    original = pipeline.measure
    shared = ablation.SharedSpectra()
    try:
        first = ablation.measure_cell(teacher, calib, test, 1.0, shared, 0.8, "sequential", 2, 1)
        second = ablation.measure_cell(teacher, calib, test, 1.0, shared, 0.8, "loss", 2, 1)
        assert computed["n"] == 1 and first["reused_s"] == 0  # the second cell reused the first's spectra
        assert shared.reused_s > 0 and second["inherit_s"] >= second["reused_s"]
        assert first["perplexity"] == pytest.approx(lone["sequential"], rel=1e-6)
        assert second["perplexity"] == pytest.approx(lone["loss"], rel=1e-6)
        assert second["config"]["allocation"] == "loss" and second["params"] <= 0.8 * tm.n_params(teacher)
        # A new calibration list is never served the old spectra.
        third = ablation.measure_cell(teacher, list(calib), test, 1.0, shared, 0.8, "loss", 2, 1)
        assert third["reused_s"] == 0 and computed["n"] == 2
    finally:
        shared.close()
    assert pipeline.measure is original


def test_calibration_is_kept_within_the_presets_cap(ablation, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["smollm2_zero_shot.py", "--calib", "1024", "--report"])
    with pytest.raises(SystemExit, match=r"--calib takes 1\.\.512"):
        ablation.main()
    monkeypatch.setattr("sys.argv", ["smollm2_zero_shot.py", "--rows", "nope", "--report"])
    with pytest.raises(SystemExit, match="unknown rows"):
        ablation.main()


def test_a_part_runs_then_a_rerun_measures_nothing(ablation, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """main() end to end on a stand-in preset (a tiny Llama): the cells and the teacher are written, and the
    same command again finds nothing to do; a further part adds its cells beside them."""
    import torch

    from inhernet_bench.presets import registry

    teacher, _ = tm.llama_tiny()
    blocks = torch.randint(0, 100, (12, 8), generator=torch.Generator().manual_seed(0))
    calib_sizes: list[int] = []

    def calib(n: int) -> list[dict]:
        calib_sizes.append(n)
        return [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in blocks[:n].split(2)]

    def data(batch_size: int = 4, test_blocks: int = 2, **_: object):
        test = [{"input_ids": blocks[-test_blocks:], "labels": blocks[-test_blocks:]}]
        return None, test

    stand_in = registry.Preset("smollm2-bbc", "stand-in", "perplexity", lambda: teacher, data, calib)
    monkeypatch.setattr(registry, "get_preset", lambda name: stand_in)
    argv = ["smollm2_zero_shot.py", "--calib", "4,2", "--rows", "floor,loss", "--test-blocks", "2",
            "--threads", "1", "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", argv)
    ablation.main()
    result = json.loads((tmp_path / f"{ablation.RESULT}.json").read_text())
    assert calib_sizes == [2, 4]  # smallest calibration first, each built once
    assert {(c["row"], c["calib_blocks"]) for c in result["cells"]} == {("floor", 2), ("loss", 2), ("floor", 4), ("loss", 4)}
    teacher_ppl = result["teacher"]["2"]["perplexity"]
    for c in result["cells"]:
        assert c["params"] <= 0.8 * tm.n_params(teacher) and c["ratio_to_teacher"] == pytest.approx(c["perplexity"] / teacher_ppl)
    capsys.readouterr()
    ablation.main()  # the same part again: nothing left to measure
    assert "0 cell(s) to measure" in capsys.readouterr().out and calib_sizes == [2, 4]
    monkeypatch.setattr("sys.argv", [*argv[:4], "one-pass", *argv[5:]])
    ablation.main()
    result = json.loads((tmp_path / f"{ablation.RESULT}.json").read_text())
    assert len(result["cells"]) == 6 and "| 0.8 | one-pass whitening, energy allocation |" in (
        tmp_path / f"{ablation.RESULT}.md").read_text()
