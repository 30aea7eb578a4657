"""inhernet_bench.scripts.latency: the latency table on the real mnist-cnn teacher, in its --quick smoke mode.

Timings are real but tiny (3 rounds of 2 ms), so no number is asserted beyond being positive; what is
asserted is the table's structure and its invariants: every model timed on every point, the teacher's
ratio 1, the matched baselines at least the InherNet's size, the full-rank compact reproducing the
teacher, ONNX agreeing with torch, accuracies read only from a bench result of the same models, and
under a latency match compact keeping the plan's ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark
from inhernet.costs import table as cost_module

QUICK = ["--quick", "--batches", "1", "4", "--calib-size", "64"]


@pytest.fixture(scope="module")
def latency_script():
    return load_benchmark("latency")


@pytest.fixture()
def private_costs(tmp_path, monkeypatch):
    """Cost tables cached under tmp_path (not the user's cache); their layer and whole-model timings cut to
    3 rounds of at least 2 ms (the --quick mode's own)."""
    monkeypatch.setattr(cost_module, "cost_dir", lambda: tmp_path / "costs")
    real = cost_module.time_calls

    def quick(calls, repeats=7, min_time=2e-3, device="cpu", threads=None):
        return real(calls, min(repeats, 3), min(min_time, 2e-3), device, threads)

    monkeypatch.setattr(cost_module, "time_calls", quick)


def bench_json(path: Path, **overrides) -> Path:
    """A minimal `inhernet bench --json` result for mnist-cnn at budget 0.25 (params); the models timed are
    built as the bench builds them (1000 calibration examples), so the params agree."""
    data = {
        "preset": "mnist-cnn", "budget": 0.25, "match": "params", "metric": "accuracy",
        "teacher": {"params": 390410, "metric": 0.9906},
        "methods": [
            {"name": "inhernet", "params": 97322, "metric_mean": 0.9871, "metric_std": 0.0004, "seeds": [0, 1, 2]},
            {"name": "prune-kd", "params": 98548, "metric_mean": 0.9855, "metric_std": 0.0010, "seeds": [0, 1, 2]},
            {"name": "kd-student", "params": 97855, "metric_mean": 0.9843, "metric_std": 0.0007, "seeds": [0, 1, 2]},
            {"name": "svd-kd", "params": 97000, "metric_mean": 0.98, "metric_std": 0.001, "seeds": [0, 1, 2]},
        ],
    }
    data.update(overrides)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.assets
def test_quick_table_on_mnist_cnn(latency_script, private_costs, tmp_path) -> None:
    out = tmp_path / "table.md"
    argv = [*QUICK, "--threads", "1", "--backends", "eager", "onnxruntime", "compile", "--compile-backend",
            "aot_eager", "--out", str(out)]
    assert latency_script.main(argv) == 0
    text = out.read_text()
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["command"] == "python -m inhernet_bench.scripts.latency " + " ".join(argv)
    assert f"Command: `{result['command']}`" in text
    models = result["models"]
    assert list(models) == list(latency_script.MODELS)
    labels = [p["label"] for p in result["points"]]
    assert labels == ["eager 1t", "onnxruntime 1t", "compile 1t"]
    for key, m in models.items():
        for label in labels:
            assert set(m["latency_ms"][label]) == {"1", "4"}, (key, label)
            assert all(ms > 0 for ms in m["latency_ms"][label].values()), (key, label)
        assert m["label"] in text
    # The baselines are at least the InherNet's size (parameters here), as the bench sizes them.
    sizes = result["plan"]["sizes"]
    assert sizes["prune-kd"] >= sizes["inhernet"] and sizes["kd-student"] >= sizes["inhernet"]
    assert models["inhernet"]["params"] <= 0.25 * models["teacher"]["params"]
    # The full-rank compact model is the teacher's architecture and function.
    full = models["full-rank-compact"]
    assert full["params"] == models["teacher"]["params"] and full["macs"] == models["teacher"]["macs"]
    assert full["deviation_from_teacher"] <= 1e-4
    assert all(err < 1e-4 for err in result["onnx_deviation"].values()) and len(result["onnx_deviation"]) == 6
    assert all(m["accuracy"] == "not measured" for m in models.values()), "no --accuracy-from: nothing claimed"
    assert any(t.startswith("compact of full rank reproduces the teacher") for t in result["targets"])


@pytest.mark.assets
def test_quick_table_under_a_latency_budget(latency_script, private_costs, tmp_path, capsys) -> None:
    """--latency: InherNet planned in measured time, and compact deploys the plan's ranks unchanged.

    On mnist-cnn rank cuts alone reach about 75% of the teacher's time (its first conv and the
    element-wise ops stay), so the test budgets 0.9; an unreachable budget fails in one line."""
    assert latency_script.main([*QUICK, "--latency", "0.05", "--threads", "1", "--out", str(tmp_path / "x.md")]) == 2
    assert "error: latency budget of" in capsys.readouterr().err and not (tmp_path / "x.md").exists()
    out = tmp_path / "lat.md"
    assert latency_script.main([*QUICK, "--latency", "0.9", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["match"] == "latency" and result["budget"] == 0.9
    plan = result["plan"]
    ns = plan["plan_latency_ns"]
    # the plan kept is the one whose compact form measured within the budget (inherit's check; planned again
    # at a scaled fraction when the first measured outside 0.9-1.03 of it)
    (kept,) = [c for c in plan["latency_checks"] if c.get("kept")]
    assert ns["target"] == int(kept["planned"] * ns["teacher"]) and ns["total"] <= ns["target"]
    assert plan["compact_exact"], plan["compact"]
    for entry in plan["compact"].values():
        assert entry["rank"] is None or entry["rank"] == entry["rank_before"], entry
    assert all(m["accuracy"] == "not measured" for m in result["models"].values())
    assert "not measured" in out.read_text()


def test_accuracies_come_only_from_a_bench_of_the_same_models(latency_script, tmp_path) -> None:
    read = latency_script.read_accuracies
    good = bench_json(tmp_path / "good.json")
    acc = read(good, preset="mnist-cnn", budget=0.25, match="params")
    assert set(acc["models"]) == {"teacher", "inhernet", "prune-kd", "kd-student"}
    assert acc["models"]["prune-kd"]["value"] == 0.9855 and acc["models"]["prune-kd"]["seeds"] == 3
    with pytest.raises(ValueError, match=r"preset='mnist-cnn' \(this run: 'tweets-minilm'\)"):
        read(good, preset="tweets-minilm", budget=0.25, match="params")
    with pytest.raises(ValueError, match=r"match='params' \(this run: 'latency'\).*--match latency"):
        read(good, preset="mnist-cnn", budget=0.25, match="latency")
    with pytest.raises(ValueError, match=r"budget=0.25 \(this run: 0.5\)"):
        read(good, preset="mnist-cnn", budget=0.5, match="params")
    with pytest.raises(ValueError, match=r"reference='inhernet' \(this run: 'inhernet-prune'\).*--reference inhernet-prune"):
        read(good, preset="mnist-cnn", budget=0.25, match="params", reference="inhernet-prune")
    hybrid = json.loads(good.read_text())
    hybrid["reference"] = "inhernet-prune"
    hybrid["methods"] = [{**m, "name": "inhernet-prune"} if m["name"] == "inhernet" else m for m in hybrid["methods"]]
    (tmp_path / "hybrid.json").write_text(json.dumps(hybrid))
    acc = read(tmp_path / "hybrid.json", preset="mnist-cnn", budget=0.25, match="params", reference="inhernet-prune")
    assert acc["models"]["inhernet"]["value"] == 0.9871  # the hybrid's row, timed here as the InherNet
    (tmp_path / "bad.json").write_text('{"preset": "mnist-cnn"}')
    with pytest.raises(ValueError, match="not an `inhernet bench --json` result"):
        read(tmp_path / "bad.json", preset="mnist-cnn", budget=0.25, match="params")
    with pytest.raises(ValueError, match="cannot read it as JSON"):
        read(tmp_path / "missing.json", preset="mnist-cnn", budget=0.25, match="params")


def test_accuracy_cells(latency_script, tmp_path) -> None:
    """The bench's accuracies go to the models it trained; compact's only where it is the same function;
    a model timed here at another size than the bench's is flagged."""
    from torch import nn

    acc = latency_script.read_accuracies(bench_json(tmp_path / "b.json"), preset="mnist-cnn", budget=0.25,
                                         match="params")
    models = {"teacher": nn.Linear(10, 10), "inhernet": nn.Linear(10, 10), "inhernet-compact": nn.Linear(10, 10),
              "kd-student": nn.Linear(10, 10), "full-rank-compact": nn.Linear(10, 10)}
    cells = latency_script.accuracy_cells(acc, models, {"compact_exact": True})
    assert cells["teacher"] == "0.9906 (bench model: 390,410 params)"
    assert cells["inhernet"] == "0.9871 ± 0.0004 (3 seeds) (bench model: 97,322 params)"
    assert cells["inhernet-compact"] == "0.9871 (= training form: compact is exact here)"
    assert cells["kd-student"].startswith("0.9843 ± 0.0007")
    assert cells["full-rank-compact"] == "0.9906 (= teacher)"
    assert "prune-kd" not in cells  # not built here: no row
    cut = latency_script.accuracy_cells(acc, models, {"compact_exact": False})
    assert cut["inhernet-compact"].startswith("not measured")
    none = latency_script.accuracy_cells(None, models, {"compact_exact": True})
    assert set(none.values()) == {"not measured"}


@pytest.mark.parametrize(
    "argv",
    [["--latency", "0.5", "--budget", "0.3"], ["--latency", "0.5", "--match", "params"],
     ["--device", "cuda", "--backends", "onnxruntime"], ["--dtype", "bfloat16", "--backends", "onnxruntime"],
     ["--threads", "0"], ["--accuracy-from", "bench.json", "--calib-size", "64"],
     ["--accuracy-from", "bench.json", "--prune", "0.3"]],
    ids=["latency-and-budget", "latency-and-match", "ort-on-cuda", "ort-in-bf16", "zero-threads", "accuracy-calib",
         "accuracy-fixed-prune"],
)
def test_contradictory_options_are_refused(latency_script, argv, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        latency_script.parse_args(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_defaults_per_device(latency_script) -> None:
    cpu = latency_script.parse_args([])
    assert (cpu.budget, cpu.match, cpu.backends, cpu.dtype, cpu.batches, cpu.threads) == (
        0.25, "params", ["eager", "onnxruntime"], "float32", [1, 256], [1, 2]
    )
    assert latency_script.default_out(cpu).name == "latency-mnist-cnn-params0.25.md"
    gpu = latency_script.parse_args(["--device", "cuda", "--latency", "0.5"])
    assert (gpu.budget, gpu.match, gpu.backends, gpu.dtype) == (0.5, "latency", ["eager", "compile"], "bfloat16")
    assert latency_script.default_out(gpu).name == "latency-mnist-cnn-latency0.5-cuda.md"
    assert "synchronised" in latency_script.how(gpu) and "onnxruntime" not in latency_script.how(gpu)
    assert "torch.compile" in latency_script.how(gpu) and "set_num_threads" in latency_script.how(cpu)


def test_prune_option_names_the_hybrid(latency_script, tmp_path, capsys) -> None:
    """--prune auto|FRACTION: the InherNet rows are the hybrid, named so, written beside the plain table."""
    args = latency_script.parse_args(["--latency", "0.5", "--prune", "auto"])
    assert args.prune == "auto" and args.match == "latency" and args.budget == 0.5
    labels = latency_script.model_labels(args)
    assert labels["inhernet-compact"] == "InherNet+prune auto compact" and labels["teacher"] == "teacher"
    assert latency_script.default_out(args).name == "latency-mnist-cnn-latency0.5-pruneauto.md"
    share = latency_script.parse_args(["--latency", "0.5", "--prune", "0.3"])
    assert share.prune == 0.3 and latency_script.model_labels(share)["inhernet"] == "InherNet+prune 0.3 (training form)"
    assert latency_script.model_labels(latency_script.parse_args([])) == latency_script.MODELS
    for bad, message in (("half", "neither 'auto' nor a number"), ("1.5", "not a share in")):
        with pytest.raises(SystemExit):
            latency_script.parse_args(["--prune", bad])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        latency_script.parse_args(["--prune", "0.3", "--accuracy-from", str(tmp_path / "x.json")])
    assert "no bench method prunes a fixed share" in capsys.readouterr().err
    assert latency_script.parse_args(["--prune", "auto", "--accuracy-from", "x.json"]).prune == "auto"
