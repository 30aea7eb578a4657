"""``min_rank_ratio``: a floor on every factorised layer's rank, so that no layer is starved."""

from __future__ import annotations

import math

import pytest
import torch

import tiny_models as tm
from inhernet import InherConfig, inherit, plan
from inhernet.costs.prices import LayerCost, allocate, floor_rank, minimum_cost
from inhernet.experimental import ExperimentalConfig


def _skewed_layers() -> list[LayerCost]:
    """A 64x64 layer with a flat spectrum and a 32x32 one whose energy is all in its first value."""
    flat = torch.ones(64, dtype=torch.float64)
    spiky = torch.tensor([1.0] + [1e-6] * 31, dtype=torch.float64)
    return [LayerCost("flat", 64, 64, False, 1, 64 * 64, flat), LayerCost("spiky", 32, 32, False, 1, 32 * 32, spiky)]


def test_energy_starves_a_layer_without_a_floor_and_not_with_one() -> None:
    layers = _skewed_layers()
    available = layers[0].params(20) + layers[1].params(12)
    plain = allocate(layers, available, "energy", 1)
    assert plain["spiky"] <= 3 and plain["flat"] >= 24  # the flat layer takes nearly everything
    floored = allocate(layers, available, "energy", 1, 0.25)
    assert floored["spiky"] == floor_rank(layers[1], 1, 0.25) == 8
    assert sum(layer.params(floored[layer.name]) for layer in layers) <= available


def test_floor_rank_and_minimum_cost() -> None:
    layer = _skewed_layers()[1]  # 32x32, break-even rank 15
    assert floor_rank(layer, 1, 0.0) == 1
    assert floor_rank(layer, 3, 0.05) == 3  # min_rank wins
    assert floor_rank(layer, 1, 0.1) == math.ceil(3.2)
    assert minimum_cost([layer], 1, 0.25) == layer.params(8)
    # A floor above the break-even rank keeps the layer dense.
    assert minimum_cost([layer], 1, 0.6) == layer.params(None)


@pytest.mark.parametrize("allocation", ["energy", "uniform"])
def test_plan_meets_the_budget_above_the_floor(allocation: str) -> None:
    teacher, _ = tm.bert_small()
    cfg = ExperimentalConfig(budget=0.6, allocation=allocation, min_rank_ratio=0.2, init="svd")
    p = plan(teacher, cfg)
    assert 0.98 * p.target_params <= p.total_params <= p.target_params
    assert p.factorised
    for row in p.factorised:
        assert row.rank >= math.ceil(0.2 * row.max_rank), row
    student = inherit(teacher, cfg, plan=p, progress=False)
    assert tm.n_params(student) == p.total_params


def test_floor_config_is_validated_and_saved() -> None:
    for bad in (-0.1, 1.0, float("nan"), "half"):
        with pytest.raises(ValueError, match="min_rank_ratio"):
            InherConfig(min_rank_ratio=bad)
    cfg = InherConfig(min_rank_ratio=0.1, calibration="sequential")
    assert InherConfig.from_dict(cfg.to_dict()) == cfg
