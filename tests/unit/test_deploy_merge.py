"""Merging the gated experts into one up-projection (inhernet.deploy.merge)."""

from __future__ import annotations

import copy
import json
from functools import cache

import pytest
import torch
from torch import nn

from inhernet import InherBlock, InherConv, InherLinear, inherit, load, save
from inhernet.deploy import gate_means, merge_experts
from inhernet.experimental import ExperimentalConfig


class Net(nn.Module):
    """A small CNN: two conv blocks and two linear blocks once inherited."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 24)
        self.proj = nn.Linear(24, 24)
        self.head = nn.Linear(24, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.proj(self.emb(input_ids))).mean(1))


def teacher() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@cache
def _student() -> nn.Module:
    return inherit(teacher(), ExperimentalConfig(rank=6, experts=3, init="svd", expert_noise=0.05), progress=False)


def inherited() -> nn.Module:
    """A fresh copy of one inherited model (the SVDs run once per test session)."""
    return copy.deepcopy(_student())


def blocks(model: nn.Module) -> dict[str, InherBlock]:
    return {n: m for n, m in model.named_modules() if isinstance(m, InherBlock)}


def perturb_gates(model: nn.Module, std: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for b in blocks(model).values():
            if b.gate is not None:
                b.gate.weight.copy_(torch.randn(b.gate.weight.shape, generator=gen) * std)
                b.gate.bias.copy_(torch.randn(b.gate.bias.shape, generator=gen) * std)


def calib_batches(n=3, bs=8):
    gen = torch.Generator().manual_seed(2)
    return [(torch.randn(bs, 3, 16, 16, generator=gen), torch.zeros(bs, dtype=torch.long)) for _ in range(n)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_fresh_model_merges_exactly_without_calib():
    student = inherited()
    assert blocks(student) and all(b.experts == 3 for b in blocks(student).values())
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        before = student(x)
    params = n_params(student)
    assert merge_experts(student) is student
    for b in blocks(student).values():
        assert b.experts == 1 and b.gate is None
        assert b.up.weight.shape[:2] == (b.up.weight.shape[0], b.rank)
    with torch.no_grad():
        after = student(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    # per block: (h - 1) * r * m expert weights and the gate's h*r + h are gone
    saved = sum(2 * b.rank * b.up.weight.shape[0] + 3 * b.rank + 3 for b in blocks(student).values())
    assert n_params(student) == params - saved


def test_identical_experts_merge_exactly_without_calib_whatever_the_gate():
    """Experts without deviations (``expert_noise=0``) compute one up-projection under any gate, so an input-
    dependent gate needs no calibration data to fold them."""
    student = inherit(teacher(), ExperimentalConfig(rank=6, experts=3, init="svd", expert_noise=0.0), progress=False)
    perturb_gates(student)
    assert all(bool(b.gate.weight.ne(0).any()) for b in blocks(student).values())
    x = calib_batches(1)[0][0]
    merged = merge_experts(copy.deepcopy(student))
    assert all(b.experts == 1 and b.gate is None for b in blocks(merged).values())
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(x), student.eval()(x), atol=1e-5, rtol=1e-5)


def test_fresh_model_with_calib_is_exact_too():
    student = inherited()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        before = student(x)
    merge_experts(student, calib=calib_batches())
    with torch.no_grad():
        torch.testing.assert_close(student(x), before, atol=1e-5, rtol=1e-5)


def test_trained_gate_needs_calib_and_merges_approximately():
    student = inherited()
    perturb_gates(student)
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        before = student(x)
    with pytest.raises(ValueError, match="needs calib"):
        merge_experts(student)
    assert all(b.experts == 3 for b in blocks(student).values())  # untouched by the failed call
    params = n_params(student)
    merge_experts(student, calib=calib_batches())
    assert n_params(student) < params
    with torch.no_grad():
        after = student(x)
    rel = float((after - before).abs().max() / before.abs().max())
    # input-dependent gates: the merge is only an approximation (small here: the experts differ by ~5%)
    assert 0 < rel < 0.05


def test_merged_weight_is_the_gate_mean_mixture():
    torch.manual_seed(3)
    block = InherLinear(10, 7, 4, experts=3)
    with torch.no_grad():
        block.gate.weight.normal_()
        block.gate.bias.normal_()
    experts = block.expert_weights().double()
    xs = [torch.randn(5, 2, 10) for _ in range(3)]
    with torch.no_grad():
        p = (
            torch.cat([torch.softmax(block.gate(block.down(x)), -1).reshape(-1, 3) for x in xs])
            .double()
            .mean(0)
        )
    means = gate_means(block, xs)
    torch.testing.assert_close(means[""], p)
    merge_experts(block, calib=xs)
    torch.testing.assert_close(block.up.weight.double(), torch.einsum("h,hmr->mr", p, experts))


def test_gate_with_zero_weight_merges_exactly_to_softmax_of_its_bias():
    torch.manual_seed(4)
    block = InherConv(nn.Conv2d, 3, 5, 3, rank=2, experts=3, padding=1)
    with torch.no_grad():
        block.gate.bias.copy_(torch.tensor([1.0, 0.0, -2.0]))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = block(x)
        merge_experts(block)
        torch.testing.assert_close(block(x), before, atol=1e-6, rtol=1e-5)
    assert isinstance(block.up, nn.Conv2d) and block.up.in_channels == 2


def test_embedding_blocks_merge_and_dict_batches():
    torch.manual_seed(5)
    student = inherit(TokenNet().eval(), ExperimentalConfig(rank=4, experts=3, init="svd"), progress=False)
    assert type(student.emb).__name__ == "InherEmbedding"
    perturb_gates(student)
    ids = torch.randint(0, 50, (4, 9))
    with torch.no_grad():
        before = student(ids)
    merge_experts(student, calib=[{"input_ids": ids, "labels": torch.zeros(4)}])
    assert student.emb.experts == 1 and student.emb.gate is None
    with torch.no_grad():
        after = student(ids)
    assert float((after - before).abs().max() / before.abs().max()) < 0.05


def test_empty_calib_is_rejected():
    student = inherited()
    perturb_gates(student)
    with pytest.raises(ValueError, match="no gate activations"):
        merge_experts(student, calib=[])


def test_merge_keeps_train_mode_and_trainability():
    student = inherited().train()
    perturb_gates(student)
    merge_experts(student, calib=calib_batches(1))
    assert student.training
    out = student(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    assert all(p.grad is not None for p in student.parameters())


def test_merged_model_saves_and_loads_and_its_books_say_one_expert(tmp_path):
    student = inherited()
    perturb_gates(student)
    assert student.inhernet_plan.config.experts == 3
    merge_experts(student, calib=calib_batches())
    plan = student.inhernet_plan
    assert plan.config.experts == 1
    assert {row.experts for row in plan.layers if row.factorised} == {1}
    assert plan.total_params == n_params(student)  # the rows were re-counted
    save(student, tmp_path / "merged")
    meta = json.loads((tmp_path / "merged" / "inhernet.json").read_text())
    assert {spec["experts"] for spec in meta["layers"].values()} == {1}
    assert meta["config"]["experts"] == 1 and meta["params"] == n_params(student)
    restored = load(tmp_path / "merged", base=Net())
    assert restored.inhernet_config.experts == 1 and restored.inhernet_config.rank == 6
    assert all(b.experts == 1 and b.gate is None for b in blocks(restored).values())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), student.eval()(x), atol=0, rtol=0)


def test_merging_a_loaded_model_updates_its_config(tmp_path):
    save(inherited(), tmp_path / "a")
    loaded = load(tmp_path / "a", base=Net())
    assert loaded.inhernet_config.experts == 3
    merge_experts(loaded)
    assert loaded.inhernet_config.experts == 1
    save(loaded, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "inhernet.json").read_text())["config"]["experts"] == 1


def test_the_merge_weighs_experts_by_the_gate_not_equally():
    """Gates far from uniform: the gate-weighted mixture and the plain average of the experts differ a lot,
    and only the former reproduces the block (whose gate ignores its input, so the merge is exact)."""
    torch.manual_seed(6)
    block = InherLinear(12, 9, 5, experts=3)
    with torch.no_grad():
        block.up.weight.normal_()  # three clearly different experts
        block.gate.weight.zero_()
        block.gate.bias.copy_(torch.tensor([5.0, 0.0, -5.0]))  # p ~ (0.993, 0.007, 0.00005)
    experts = block.expert_weights().double()
    p = torch.softmax(block.gate.bias.double(), -1)
    assert p.max() > 0.99
    plain = experts.mean(0)
    weighted = torch.einsum("h,hmr->mr", p, experts)
    x = torch.randn(4, 12)
    with torch.no_grad():
        want = block(x)
        merge_experts(block)
        got = block(x)
    torch.testing.assert_close(block.up.weight.double(), weighted)
    distance = float((block.up.weight.detach().double() - plain).norm() / plain.norm())
    assert distance > 0.5, distance  # far from the plain average
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        averaged = block.down(x) @ plain.float().T + block.up.bias
    assert float((averaged - want).abs().max()) > 0.1  # a plain average would have changed the outputs


def test_measured_gate_means_weigh_the_merge():
    """An input-dependent gate that prefers one expert on every input: the merge follows the measured means."""
    torch.manual_seed(7)
    block = InherLinear(8, 6, 4, experts=3)
    with torch.no_grad():
        block.up.weight.normal_()
        block.gate.weight.normal_(std=0.1)
        block.gate.bias.copy_(torch.tensor([-4.0, 4.0, 0.0]))
    xs = [torch.randn(16, 8) for _ in range(2)]
    means = gate_means(block, xs)[""]
    assert means[1] > 0.9  # far from uniform
    experts = block.expert_weights().double()
    merge_experts(block, calib=xs)
    torch.testing.assert_close(block.up.weight.double(), torch.einsum("h,hmr->mr", means, experts))
    assert float((block.up.weight.detach().double() - experts.mean(0)).norm() / experts.mean(0).norm()) > 0.5
