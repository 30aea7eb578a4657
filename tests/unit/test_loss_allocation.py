"""``allocation="loss"`` and ``"loss-by-type"``: ranks by absolute whitened truncation loss.

``"energy"`` counts each layer's spectrum as fractions of its own total; ``"loss"`` counts every singular
value at its absolute worth (with whitening, the mean squared output error per calibration token that
dropping it adds); ``"loss-by-type"`` compares absolute losses within a matrix type.
"""

from __future__ import annotations

import math

import pytest
import torch

import tiny_models as tm
from inhernet import InherConfig, inherit, plan
from inhernet.calibration import InputCovariance
from inhernet.costs.prices import LayerCost, allocate, energy_weights, floor_rank, layer_type
from inhernet.decomposition import factorize
from inhernet.experimental import ExperimentalConfig


def _layers(quiet_scale: float) -> list[LayerCost]:
    """Two 64x64 layers (break-even rank 31) with the same spectrum shape; ``quiet``'s absolute energy is
    ``quiet_scale`` times ``loud``'s. As fractions they are equal; in absolute loss ``quiet`` is worth little."""
    flat = torch.linspace(2.0, 1.0, 64, dtype=torch.float64)
    return [
        LayerCost("loud", 64, 64, False, 1, 64 * 64, flat.clone()),
        LayerCost("quiet", 64, 64, False, 1, 64 * 64, flat * quiet_scale),
    ]


def _spent(layers: list[LayerCost], ranks: dict[str, int | None]) -> int:
    return sum(layer.params(ranks[layer.name]) for layer in layers)


def test_loss_moves_rank_from_the_layer_with_a_tiny_absolute_loss() -> None:
    layers = _layers(1e-3)
    available = 2 * layers[0].params(10)
    energy = allocate(layers, available, "energy", 1)
    loss = allocate(layers, available, "loss", 1)
    # Fractions: the two spectra look the same, so the ranks are (nearly) equal.
    assert abs(energy["loud"] - energy["quiet"]) <= 1
    # Absolute loss: the quiet layer's values are worth 1,000x less; it drops to min_rank.
    assert loss["quiet"] == 1 and loss["loud"] > energy["loud"]
    for ranks in (energy, loss):
        assert _spent(layers, ranks) <= available


def test_loss_keeps_the_floor() -> None:
    layers = _layers(1e-3)
    available = 2 * layers[0].params(20)
    floored = allocate(layers, available, "loss", 1, 0.25)
    assert floored["quiet"] == floor_rank(layers[1], 1, 0.25) == 16
    assert floored["loud"] > floored["quiet"] and _spent(layers, floored) <= available


def test_loss_by_type_compares_losses_within_a_type_only() -> None:
    """Two types; within each, one layer is 100x louder. ``loss-by-type`` follows the loudness within a
    type but, unlike ``loss``, does not let one type's scale starve the other type."""
    flat = torch.linspace(2.0, 1.0, 64, dtype=torch.float64)
    layers = [
        LayerCost(f"blocks.{i}.{t}", 64, 64, False, 1, 64 * 64, flat * scale * (100.0 if i == 0 else 1.0))
        for t, scale in (("big", 1.0), ("small", 1e-4)) for i in range(2)
    ]
    assert layer_type("blocks.0.big") == layer_type("blocks.1.big") == "blocks.*.big"
    available = 4 * layers[0].params(8)
    loss = allocate(layers, available, "loss", 1)
    by_type = allocate(layers, available, "loss-by-type", 1)
    assert loss["blocks.0.small"] == loss["blocks.1.small"] == 1  # one type's scale starves the other
    assert by_type["blocks.0.small"] > 1 and by_type["blocks.0.big"] > by_type["blocks.1.big"]
    assert by_type["blocks.0.small"] > by_type["blocks.1.small"]
    assert _spent(layers, by_type) <= available
    # The weights: each type's mean total is worth one unit.
    weights = energy_weights(layers, "loss-by-type")
    total = float(flat.sum())
    assert weights["blocks.0.big"] == pytest.approx(1 / (50.5 * total))
    assert weights["blocks.0.small"] == pytest.approx(1 / (50.5e-4 * total))


def test_energy_weights_make_energy_the_fraction_and_loss_the_absolute() -> None:
    layers = _layers(0.5)
    assert energy_weights(layers, "loss") == {"loud": 1.0, "quiet": 1.0}
    fraction = energy_weights(layers, "energy")
    assert fraction["quiet"] == pytest.approx(2 * fraction["loud"])
    zero = [LayerCost("dead", 4, 4, False, 1, 16, torch.zeros(4, dtype=torch.float64))]
    assert energy_weights(zero, "energy") == {"dead": 0.0} == energy_weights(zero, "loss-by-type")


def test_unknown_strategy_and_missing_spectra_are_refused() -> None:
    layers = _layers(1.0)
    with pytest.raises(ValueError, match="strategy must be one of"):
        allocate(layers, 10_000, "greedy", 1)
    bare = [LayerCost("x", 8, 8, False, 1, 64)]
    with pytest.raises(ValueError, match="loss allocation needs each layer's singular values"):
        allocate(bare, 60, "loss", 1)
    with pytest.raises(ValueError, match="allocation must be one of"):
        InherConfig(allocation="svd-llm")


def test_output_energy_is_the_truncation_loss_per_row() -> None:
    """SVD-LLM: dropping whitened direction i adds exactly sigma_i^2 to ||W X - W' X||^2 (here per row)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 20, dtype=torch.float64, generator=g)
    x = torch.randn(500, 20, dtype=torch.float64, generator=g) * torch.linspace(0.1, 3.0, 20, dtype=torch.float64)
    cov = InputCovariance(20, False)
    cov.update(x * 7.0)  # any input scale: output_energy follows it, energy does not
    f = factorize(w, cov, damping=0.0)
    for rank in (3, 8):
        down, up = f.truncated(rank)
        err = ((x * 7.0) @ (w - up @ down).T).square().sum() / x.shape[0]
        assert float(err) == pytest.approx(float(f.output_energy[rank:].sum()), rel=1e-6)
    assert float(f.energy.sum()) == pytest.approx(float(f.output_energy.sum()) / f.scale)
    plain = factorize(w)
    assert plain.scale == 1.0 and torch.equal(plain.output_energy, plain.energy)


@pytest.mark.parametrize("allocation", ["loss", "loss-by-type"])
def test_plan_meets_the_budget_within_two_percent_above_the_floor(allocation: str) -> None:
    teacher, batch = tm.llama_tiny()
    cfg = ExperimentalConfig(budget=0.7, allocation=allocation, min_rank_ratio=0.2)
    p = plan(teacher, cfg, calib=[batch])
    assert 0.98 * p.target_params <= p.total_params <= p.target_params
    assert p.factorised and p.config.allocation == allocation
    for row in p.factorised:
        assert row.rank >= math.ceil(0.2 * row.max_rank), row
    student = inherit(teacher, cfg, calib=[batch], plan=p, progress=False)
    assert tm.n_params(student) == p.total_params
    assert InherConfig.from_dict(p.config.to_dict()).allocation == allocation


def test_loss_and_energy_plans_differ_on_a_model_with_unequal_layer_scales() -> None:
    """On a real (tiny) model the absolute losses of its layers differ by orders of magnitude, so the two
    allocations choose different ranks at the same budget; both meet it."""
    teacher, batch = tm.llama_tiny()
    plans = {a: plan(teacher, InherConfig(budget=0.6, allocation=a, min_rank_ratio=0.0), calib=[batch])
             for a in ("energy", "loss")}
    ranks = {a: {r.name: r.rank for r in p.layers} for a, p in plans.items()}
    assert ranks["energy"] != ranks["loss"]
    for p in plans.values():
        assert 0.98 * p.target_params <= p.total_params <= p.target_params
