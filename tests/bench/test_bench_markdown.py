"""inhernet_bench.scripts.bench_markdown: the table of a committed bench JSON."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_scripts import load_benchmark

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_a_latency_matched_table_shows_each_models_time_and_the_reference():
    render = load_benchmark("bench_markdown").render
    result = json.loads((RESULTS / "mnist-cnn-latency0.8-1ep.json").read_text())
    result["reference"] = "inhernet-prune"
    text = render(result)
    assert "budget 0.8 of the teacher's measured latency" in text and "baselines sized from inhernet-prune" in text
    header, _, teacher, *rows = [line for line in text.splitlines() if line.startswith("|")][:6]
    assert " latency ms |" in header and header.count("|") == teacher.count("|") == rows[0].count("|")
    ratio = result["methods"][0]["latency_ms"] / result["teacher"]["latency_ms"]
    assert f"{result['methods'][0]['latency_ms']:.1f} ({ratio:.2f}x)" in rows[0]


def test_a_parameter_matched_table_has_no_latency_column():
    render = load_benchmark("bench_markdown").render
    text = render(json.loads((RESULTS / "fashion-effnet-0.1-2000.json").read_text()))
    assert "of the teacher's params" in text and "latency ms" not in text and "sized from" not in text


def test_a_perplexity_table_compares_inhernet_by_ratio_and_a_dual_encoders_by_its_recalls():
    render = load_benchmark("bench_markdown").render
    lm = json.loads((RESULTS / "smollm2-bbc-0.8.json").read_text())
    by_name = {m["name"]: m for m in lm["methods"]}
    ratio = by_name["inhernet"]["metric_mean"] / by_name["kd-student"]["metric_mean"]
    assert f"InherNet / kd-student perplexity: {ratio:.3f}x (lower is better)" in render(lm)
    dual = json.loads((RESULTS / "fashion-dual-0.25.json").read_text())
    recalls = list(dual["teacher"]["other_metrics"])
    assert "| method | " + " | ".join(recalls) + " |" in render(dual)
