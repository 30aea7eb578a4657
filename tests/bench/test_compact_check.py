"""The acceptance measurement of ``compact()`` (issue 26, item 3): ``inhernet_bench.scripts.compact_check``.

Run on ``mnist-cnn`` with 2 KD steps and one timing round: every model is scored on the same validation
split (the end of the training split, never trained on), the record holds what the table needs, and a
rerun skips the cases already measured unless ``--force``."""

from __future__ import annotations

import json

import pytest

from benchmark_scripts import load_benchmark
from inhernet.deploy.compact import TOLERANCE

compact_check = load_benchmark("compact_check")
N_VAL = 300


def test_drop_points_is_worse_is_positive_for_accuracy_and_perplexity():
    assert compact_check.drop_points(0.90, 0.88, "accuracy") == pytest.approx(2.0)
    assert compact_check.drop_points(0.90, 0.91, "accuracy") == pytest.approx(-1.0)
    assert compact_check.drop_points(20.0, 20.1, "perplexity") == pytest.approx(0.5)  # per cent of the student's
    assert compact_check.drop_points(20.0, 19.0, "perplexity") < 0


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """One run of the script on mnist-cnn; the example indices each evaluation and the training saw."""
    out = tmp_path_factory.mktemp("compact-check") / "compact-check.json"
    seen: dict[str, list] = {"evaluated": [], "trained": []}
    real_evaluate, real_distill = compact_check.evaluate, compact_check.distill

    def evaluate(model, loader, metric):
        seen["evaluated"].append(list(loader.dataset.indices))
        return real_evaluate(model, loader, metric)

    def distill(student, teacher, loader, val, cfg):
        seen["trained"].append(list(loader.dataset.indices))
        return real_distill(student, teacher, loader, val, cfg)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compact_check, "evaluate", evaluate)
        mp.setattr(compact_check, "distill", distill)
        argv = ["--cases", "mnist-cnn", "--steps", "2", "--repeats", "1", "--val-examples", str(N_VAL), "--out", str(out)]
        assert compact_check.main(argv) == 0
    return out, seen


@pytest.mark.assets
def test_every_model_is_scored_on_the_same_validation_split_never_trained_on(mnist_run):
    out, seen = mnist_run
    record = json.loads(out.read_text())["cases"]["mnist-cnn"]
    first = seen["evaluated"][0]
    assert len(seen["evaluated"]) == 1 + len(record["models"])  # the untrained student, then each model
    assert all(indices == first for indices in seen["evaluated"])
    assert len(first) == record["val_examples"] == N_VAL
    assert seen["trained"] and not set(seen["trained"][0]) & set(first)


@pytest.mark.assets
def test_the_record_holds_each_models_score_size_latency_and_the_verdict(mnist_run):
    out, _ = mnist_run
    record = json.loads(out.read_text())["cases"]["mnist-cnn"]
    assert set(record["models"]) == {"student", *compact_check.POLICIES}
    assert record["moved"] > 0 and record["lr"] > 0  # the student trained, at its family's learning rate
    for name, row in record["models"].items():
        assert 0 <= row["score"] <= 1 and row["params"] > 0 and row["latency_ms"] > 0, name
        assert row["drop_points"] == pytest.approx(100 * (record["models"]["student"]["score"] - row["score"]))
    assert record["models"]["exact"]["output_change"] <= TOLERANCE  # every rank kept: the same outputs
    assert record["within_points"] == (record["models"]["compact"]["drop_points"] <= record["points"])
    assert record["latency"]["threads"] == 2 and record["latency"]["batch_size"] > 0
    assert "--cases mnist-cnn" in record["command"]
    table = out.with_suffix(".md").read_text()
    assert all(f"| mnist-cnn | accuracy | {name}" in table for name in record["models"])


@pytest.mark.assets
def test_a_rerun_skips_measured_cases_unless_forced(mnist_run, monkeypatch, tmp_path):
    before = mnist_run[0].read_text()
    out = tmp_path / "compact-check.json"
    out.write_text(before)
    monkeypatch.setattr(compact_check, "measure", lambda name, args: pytest.fail("measured again"))
    compact_check.main(["--cases", "mnist-cnn", "--out", str(out)])
    assert out.read_text() == before
    stub = {**json.loads(before)["cases"]["mnist-cnn"], "wall_s": -1.0}
    monkeypatch.setattr(compact_check, "measure", lambda name, args: stub)
    compact_check.main(["--cases", "mnist-cnn", "--out", str(out), "--force"])
    assert json.loads(out.read_text())["cases"]["mnist-cnn"]["wall_s"] == -1.0
