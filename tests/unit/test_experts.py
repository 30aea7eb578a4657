"""Experts: function preserving at init, yet distinct; training really breaks their symmetry.

The contrast case (``expert_noise=0``) documents why the zero-sum deviations exist: identical experts
under a zero gate get identical gradients and the gate gets none, so they never diverge.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tiny_models as tm
from inhernet import InherBlock, InherConfig, expert_spread, inherit, plan
from inhernet.experimental import ExperimentalConfig

MODELS = tm.GATED_MODELS


def blocks(model: nn.Module) -> list[InherBlock]:
    return [m for m in model.modules() if isinstance(m, InherBlock)]


def with_experts(teacher: nn.Module, cfg: InherConfig) -> nn.Module:
    """``inherit`` at the ranks ``cfg`` gives with one expert (h=3 alone saves nothing at these sizes)."""
    single = plan(teacher, InherConfig(rank=cfg.rank, experts=1, init="svd"))
    assert single.factorised
    return inherit(teacher, cfg, plan=single, progress=False)


@pytest.mark.parametrize("init", ["svd", "whiten"])
@pytest.mark.parametrize("name", list(MODELS))
def test_experts_differ_but_init_output_equals_single_expert(name: str, init: str) -> None:
    teacher, batch = MODELS[name]()
    calib = [batch]
    one = inherit(teacher, InherConfig(rank=0.5, experts=1, init=init), calib=calib, progress=False).eval()
    ranks = one.inhernet_plan.ranks()
    assert ranks and any(
        r < row.max_rank for r, row in zip(ranks.values(), one.inhernet_plan.factorised, strict=True)
    )
    noise = 0.05
    cfg = ExperimentalConfig(rank=0.5, experts=3, init=init, expert_noise=noise)
    # The same ranks with three experts (at these tiny sizes h=3 alone would save nothing, so reuse
    # h=1's plan: the documented way to build another variant with the same structure).
    three = inherit(teacher, cfg, calib=calib, plan=one.inhernet_plan, progress=False).eval()
    assert {n: b.rank for n, b in three.named_modules() if isinstance(b, InherBlock)} == ranks
    for block in blocks(three):
        assert block.experts == 3
        # Each deviation has norm ~ expert_noise * ||U_r S_r||, so the spread is the noise level.
        assert expert_spread(block) == pytest.approx(noise, rel=1e-3)
        assert torch.all(block.gate.weight == 0) and torch.all(block.gate.bias == 0)
    # The deviations sum to zero: the mean expert is the single expert of h=1.
    singles = dict(one.named_modules())
    for name_, block in three.named_modules():
        if isinstance(block, InherBlock):
            single = singles[name_]
            assert torch.allclose(block.expert_weights().mean(0), single.expert_weights()[0], atol=1e-6)
    assert tm.rel_err(tm.run(three, batch), tm.run(one, batch)) <= 1e-5


def test_expert_noise_is_seeded() -> None:
    teacher, _ = tm.mlp()
    a = with_experts(teacher, InherConfig(rank=0.5, init="svd", experts=3, seed=1))
    b = with_experts(teacher, InherConfig(rank=0.5, init="svd", experts=3, seed=1))
    c = with_experts(teacher, InherConfig(rank=0.5, init="svd", experts=3, seed=2))
    assert tm.same_state(a.state_dict(), b.state_dict())
    assert not tm.same_state(a.state_dict(), c.state_dict())


def _train(expert_noise: float, steps: int = 30) -> tuple[nn.Module, list[float], list[float]]:
    """A few Adam steps of toy regression towards a different function; returns spreads before/after."""
    teacher, _ = tm.mlp()
    cfg = ExperimentalConfig(rank=4, experts=3, init="svd", expert_noise=expert_noise)
    student = with_experts(teacher, cfg).train()
    assert len(blocks(student)) == 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g)
    target = torch.sin(3 * x[:, :5]) + x[:, 5:10] ** 2
    before = [expert_spread(b) for b in blocks(student)]
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(student(x), target).backward()
        opt.step()
    return student, before, [expert_spread(b) for b in blocks(student)]


def test_training_breaks_expert_symmetry() -> None:
    student, before, after = _train(expert_noise=0.02)
    for b0, b1 in zip(before, after, strict=True):
        assert b0 > 0
        assert b1 > 2 * b0, "the experts must diverge during training"
    for block in blocks(student):
        w = block.gate.weight.detach()
        assert w.abs().max() > 1e-3, "the gate's weights must move from zero"
        assert (w - w.mean(0)).abs().max() > 1e-3, "the gate must tell the experts apart"


def test_identical_experts_never_diverge_and_gate_gets_no_gradient() -> None:
    # One backward pass from the init: the gate's gradient vanishes when the experts are identical.
    teacher, _ = tm.mlp()
    student = with_experts(teacher, ExperimentalConfig(rank=4, experts=3, init="svd", expert_noise=0.0))
    x = torch.randn(16, 12)
    nn.functional.mse_loss(student(x), torch.randn(16, 5)).backward()
    for block in blocks(student):
        assert float(block.gate.weight.grad.abs().max()) <= 1e-6
        grads = block.up.weight.grad.reshape(block.up.weight.shape[0], 3, block.rank)
        assert torch.allclose(grads[:, 0], grads[:, 1]) and torch.allclose(grads[:, 0], grads[:, 2])

    # And after training they are still one expert that costs three.
    student, before, after = _train(expert_noise=0.0)
    assert before == [0.0, 0.0, 0.0]
    assert max(after) <= 1e-5
    for block in blocks(student):
        # Adam magnifies rounding-level gradients into steps, but they are the same for every expert:
        # the gate's rows stay equal, so its softmax stays exactly uniform and routes nothing.
        w, b = block.gate.weight.detach(), block.gate.bias.detach()
        assert torch.allclose(w, w[:1].expand_as(w), atol=1e-6)
        assert torch.allclose(b, b[:1].expand_as(b), atol=1e-6)
        x = torch.randn(5, block.rank)
        assert torch.allclose(torch.softmax(block.gate(x), -1), torch.full((5, 3), 1 / 3), atol=1e-6)
