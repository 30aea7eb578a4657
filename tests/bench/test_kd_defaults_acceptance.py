"""Acceptance of the KD learning-rate defaults (issue 26): with the student family's default learning rate,
100 KD steps never end below the untrained student's validation score (a split of the training data).

On the ``mnist-cnn`` preset (a conv net) and on a MiniLM topic classifier fine-tuned on BBC News articles
(the newcomer's case: 800 articles of 64 tokens, fine-tuned once and cached under INHERNET_HOME)."""

from __future__ import annotations

import pytest

from benchmark_scripts import load_benchmark
from inhernet import InherConfig, inherit
from inhernet.evaluate import evaluate

kd_defaults = load_benchmark("kd_defaults")


@pytest.mark.assets
@pytest.mark.parametrize("name", ["mnist-cnn", "bbc-minilm"])
def test_default_lr_never_ends_below_the_untrained_student(name):
    _, budget, batch_size, n_val = kd_defaults.CASES[name]  # the benchmark's case: its grid holds this point
    case = kd_defaults.load_case(name, batch_size)
    loaders = kd_defaults.split_loaders(case, batch_size, n_val, steps=100)
    student = inherit(case.teacher, InherConfig(budget=budget), calib=case.calib, progress=False)
    untrained = evaluate(student, loaders[1], case.metric)[case.metric]
    trained = kd_defaults.kd_score(student, case, loaders, None, steps=100)  # lr=None: the family's default
    print(f"{name}: validation {case.metric} {untrained:.4f} untrained -> {trained:.4f} at the family's lr")
    assert trained >= untrained, f"{name}: validation {case.metric} {untrained:.4f} -> {trained:.4f}"
