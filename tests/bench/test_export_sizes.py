"""inhernet_bench.scripts.export_sizes on the real mnist-cnn teacher: every format's size, or why it is refused."""

from __future__ import annotations

import json

from benchmark_scripts import load_benchmark


def test_mnist_cnn_sizes_in_every_format(tmp_path):
    script = load_benchmark("export_sizes")
    script.main(["--presets", "mnist-cnn", "--calib-size", "64", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "export-sizes.json").read_text())
    assert report["formats"] == ["weights", "pt2", "onnx", "gguf", "hf"] and report["budget"] == 0.25
    assert report["presets"]["mnist-cnn"]["teacher_trained"]  # mnist-cnn needs no teacher build
    row = report["presets"]["mnist-cnn"]
    params, teacher, student = row["params"], row["teacher"], row["student"]
    assert 0.2 * params["teacher"] <= params["student"] <= 0.25 * params["teacher"]  # the budget is met
    for fmt in ("weights", "pt2", "onnx"):
        # float32 weights dominate every file: at least 4 bytes a parameter, and the student the smaller
        assert teacher[fmt] >= 4 * params["teacher"] and student[fmt] >= 4 * params["student"], fmt
        assert student[fmt] < 0.5 * teacher[fmt], fmt
        # the weights once, and the graph: the traced example inputs are not kept at the calibration batch's size
        assert student[fmt] <= 1.1 * student["weights"] + 64_000, fmt
    for model in (teacher, student):
        assert model["gguf"].startswith("n/a: GGUF export writes llama-family causal LMs")
        assert model["hf"].startswith("n/a: ")  # not a Hugging Face model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export-sizes.json", "export-sizes.md"]
    table = (tmp_path / "export-sizes.md").read_text()
    assert f"| mnist-cnn | student | {params['student']:,} | {student['weights'] / 1e6:,.2f} |" in table
    # a refusal is a numbered rule under the table, said once however many rows it covers
    assert "| n/a (1) | n/a (2) |" in table and "(1) GGUF export writes llama-family causal LMs  " in table
