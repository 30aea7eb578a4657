"""Gate diagnostics of the experts study (inhernet_bench.gate_stats).

Invariants: a fresh model's gates route nothing (entropy 1, uniform load), the spread is the configured
expert noise, the model's mode is restored, and no activations or no gates are reported as such.
"""

from __future__ import annotations

import pytest

import tiny_models as tm
from inhernet import InherBlock, inherit
from inhernet.experimental import ExperimentalConfig
from inhernet_bench.gate_stats import gate_stats, summarize_gates


def test_gate_stats_of_a_fresh_model() -> None:
    teacher, batch = tm.cnn()
    student = inherit(teacher, ExperimentalConfig(rank=0.5, experts=3, init="svd", expert_noise=0.05), progress=False)
    student.train()
    stats = gate_stats(student, [batch])
    assert student.training, "gate_stats restores the model's mode"
    assert stats and set(stats) == {n for n, b in student.named_modules() if isinstance(b, InherBlock)}
    for s in stats.values():
        assert set(s) == {"entropy", "load", "load_entropy", "spread"}
        assert s["entropy"] == pytest.approx(1.0) and s["load_entropy"] == pytest.approx(1.0)
        assert s["spread"] == pytest.approx(0.05, rel=1e-3)
    summary = summarize_gates(stats)
    assert summary["entropy"] == pytest.approx(1.0) and summary["spread"] == pytest.approx(0.05, rel=1e-3)
    with pytest.raises(ValueError, match="no gate activations"):
        gate_stats(student, [])
    single = inherit(teacher, ExperimentalConfig(rank=0.5, experts=1, init="svd"), progress=False)
    assert gate_stats(single, [batch]) == {} and summarize_gates({}) == {}
