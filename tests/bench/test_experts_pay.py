"""``inhernet_bench.scripts.experts_pay``: h = 1 against h = N softmax-gated experts at equal parameters. The gate
variants of its committed results were removed from the library, and from the script's choices."""

from __future__ import annotations

import json

import pytest

from benchmark_scripts import load_benchmark

experts_pay = load_benchmark("experts_pay")


def test_the_variants_are_h1_and_soft_gated_h_n():
    assert [experts_pay.variant_experts(v) for v in ("h1", "h2-soft", "h3-soft", "h12-soft")] == [1, 2, 3, 12]
    for removed in ("h3-top1", "h3-position", "h3-soft-glr", "h3-top1-macs", "h1-soft", "h3", "h0"):
        with pytest.raises(ValueError, match=f"unknown variant '{removed}'.*h1 or h<N>-soft"):
            experts_pay.variant_experts(removed)
    with pytest.raises(ValueError, match="'h3-top1'"):  # a removed variant or option fails before any work
        experts_pay.parse_args(["--variants", "h1", "h3-top1"])
    with pytest.raises(SystemExit):
        experts_pay.parse_args(["--gate-lr-scale", "30"])
    assert experts_pay.parse_args([]).variants == ["h1", "h3-soft"]


def row(variant: str, gated: bool) -> dict:
    gates = {"entropy": 0.998, "load_entropy": 1.0, "spread": 0.02} if gated else {}
    return {"variant": variant, "params": 38890, "macs": 2210112, "mean_rank": 16.25, "zero_shot": 0.985,
            "final_mean": 0.9915, "final_std": 0.0, "merged_mean": 0.9915, **gates}


def test_the_table_has_a_column_per_header():
    result = {"preset": "mnist-cnn", "budget": 0.1, "metric": "accuracy", "steps": 1000, "batch_size": 64, "lr": 1e-3,
              "seeds": [0], "command": "python -m inhernet_bench.scripts.experts_pay", "machine": "x86_64, 1 threads",
              "wall_s": 1.0, "teacher": {"params": 390410, "macs": 7748608, "metric": 0.9906},
              "rows": [row("h1", False), row("h3-soft", True)]}
    lines = [line for line in experts_pay.render(result).splitlines() if line.startswith("|")]
    assert "MACs routed" not in lines[0] and "gate lr" not in experts_pay.render(result)
    assert len({line.count("|") for line in lines}) == 1, lines
    assert lines[3].startswith("| h3-soft | 38,890 | 2,210,112 | 16.2 | 0.9850 | 0.9915 ± 0.0000 | 0.9915 | 0.998 |")


@pytest.mark.assets
def test_a_short_run_writes_its_rows(tmp_path):
    argv = ["--variants", "h1", "h2-soft", "--steps", "2", "--calib-size", "64", "--out", str(tmp_path)]
    assert experts_pay.main(argv) == 0
    result = json.loads((tmp_path / "experts-pay-mnist-cnn-0.1.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["h1", "h2-soft"]
    assert "entropy" not in result["rows"][0] and "entropy" in result["rows"][1]
