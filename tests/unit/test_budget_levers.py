"""Budgets with defaults (issue 26, items 4 and 9): a MAC budget that rank cuts alone cannot reach is reached
by pruning first, said in one warning; a budget nothing reaches names every lever; a parameter budget out of
reach is refused before a calibration batch is read; each factorised layer is reported once."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

import tiny_models as tm
from inhernet import InherConfig, count_macs, inherit, plan


@tm._seeded
def depthwise_cnn() -> tuple[nn.Module, torch.Tensor]:
    """Most MACs in a depthwise conv, which no rank cut reaches (groups > 1 stays dense) but pruning does."""
    model = nn.Sequential(
        nn.Conv2d(3, 32, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2, groups=32), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()
    return model, torch.randn(16, 3, 12, 12)


class Unreadable:
    """A calibration iterable that fails if anything reads it."""

    def __iter__(self):
        raise AssertionError("calibration was read")


def test_a_mac_budget_ranks_cannot_reach_is_reached_by_pruning_from_one_batch() -> None:
    teacher, x = depthwise_cnn()
    with pytest.raises(ValueError, match=r"MAC budget .* is unreachable"):  # rank cuts alone, as plan() prices them
        plan(teacher, InherConfig(macs=0.3, init="svd"), calib=[x])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = inherit(teacher, InherConfig(macs=0.3, init="svd"), calib=[x], progress=False)  # one batch
    said = [str(w.message) for w in caught if "channels were pruned first" in str(w.message)]
    assert len(said) == 1 and "macs=0.3" in said[0]
    record = student.inhernet_plan.prune
    assert record is not None and record.ratio > 0 and f"{record.ratio:.1%}" in said[0]
    assert count_macs(student, x) <= 0.3 * count_macs(teacher, x)


def test_a_budget_nothing_reaches_names_every_lever() -> None:
    teacher, x = depthwise_cnn()
    with pytest.raises(ValueError, match="unreachable") as info:
        inherit(teacher, InherConfig(macs=0.001, init="svd", experts=2), calib=[x], progress=False)
    message = str(info.value)
    for lever in ("macs=0.", "prune='auto'", "prune=0.3", "drop_blocks=", "experts=1", "exclude="):
        assert lever in message, (lever, message)


def test_a_parameter_budget_out_of_reach_is_refused_before_calibration() -> None:
    teacher, _ = tm.cnn()
    for entry in (inherit, plan):
        with pytest.raises(ValueError, match=r"budget .* is unreachable: .*budget=0\.\d+ or more"):
            entry(teacher, InherConfig(budget=0.0001), calib=Unreadable())


@pytest.mark.parametrize(("calibration", "make"), [("one-pass", tm.cnn), ("sequential", tm.llama_tiny)])
def test_each_factorised_layer_is_reported_once(calibration, make, caplog: pytest.LogCaptureFixture) -> None:
    teacher, x = make()
    config = InherConfig(budget=0.5, calibration=calibration, drop_blocks=0)
    with caplog.at_level(logging.INFO, logger="inhernet"):
        student = inherit(teacher, config, calib=[x], progress=False)
    reported = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("factorised ")]
    result = student.inhernet_plan
    measured = [r.name for r in result.layers if r.max_rank is not None]  # every open layer's spectrum
    built = list(result.ranks()) if calibration == "sequential" else []  # calibrated again, stage by stage
    assert sorted(reported) == sorted(measured + built)
