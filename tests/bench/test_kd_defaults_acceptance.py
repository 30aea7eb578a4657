"""Acceptance of the KD learning-rate defaults (issue 26): with the student family's default learning rate,
100 KD steps never end below the untrained student's validation score (a split of the training data).

On the ``mnist-cnn`` preset (a conv net) and on a MiniLM topic classifier fine-tuned on BBC News articles
(the newcomer's case: 800 articles of 64 tokens, fine-tuned once and cached under INHERNET_HOME)."""

from __future__ import annotations

import json

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


@pytest.mark.assets
def test_schedules_are_compared_at_the_family_lr_and_added_to_the_cases_record(tmp_path):
    grid = ["--case", "mnist-cnn", "--steps", "4", "--lrs", "1e-4", "3e-4", "--extend", "0", "--out", str(tmp_path)]
    assert kd_defaults.main(grid) == 0
    assert kd_defaults.main([*grid, "--schedules", "cosine", "warmup", "constant"]) == 0
    record = json.loads((tmp_path / "mnist-cnn.json").read_text())
    schedules = record["schedules"]
    assert schedules["lr"] == 3e-4 and schedules["steps"] == 4 and list(schedules["scores"]) == list(kd_defaults.SCHEDULES)
    # the same student, batches, seed and lr: the cosine run is the grid's (its second run: the batches do not
    # depend on how many runs came before)
    assert schedules["scores"]["cosine"] == record["scores"]["0.0003"]
    assert record["scores"] and "--schedules cosine warmup constant" in schedules["command"]
    row = "| mnist-cnn | 0.0003 | " + " | ".join(f"{v:.4f}" for v in schedules["scores"].values()) + " |"
    assert row in (tmp_path / "README.md").read_text()


def test_validation_is_the_teachers_held_out_split_where_it_has_one():
    """A converged teacher fitted its KD targets on all but its own validation split: the grid scores on that
    split (never on examples the teacher trained on) and trains on none of it; without one, on the last examples."""
    import torch
    from torch.utils.data import TensorDataset

    data = TensorDataset(torch.arange(100.0))
    case = kd_defaults.Case(torch.nn.Identity(), data, None, [], "accuracy", {}, held_out=[3, 50, 7, 90, 11])
    train, val = kd_defaults.split_loaders(case, batch_size=4, n_val=4, steps=5)
    assert list(val.dataset.indices) == [3, 50, 7, 90]
    assert list(train.dataset.indices) == [0, 1, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
    case.held_out = None
    train, val = kd_defaults.split_loaders(case, batch_size=4, n_val=4, steps=5)
    assert list(val.dataset.indices) == [96, 97, 98, 99] and list(train.dataset.indices) == list(range(20))
