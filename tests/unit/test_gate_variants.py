"""Gate variants (top-1 routing, per-position conv gates, a gate learning rate) and gate diagnostics.

Invariants: every variant is function preserving at init (full rank == the teacher, and at a lower
rank == the single-expert block), top-1 breaks the experts' symmetry through its routing, the merge
is exact where it can be and approximate (by mean routing) where it cannot, and the optimiser gives
the gates their own learning rate.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tiny_models as tm
from inhernet import InherBlock, InherConfig, expert_spread, inherit, merge_experts
from inhernet.deploy.merge import gate_means
from inhernet.distillation import DistillConfig
from inhernet.experimental import ExperimentalConfig, ExperimentalDistillConfig
from inhernet.layers import configure_gates

MODELS = tm.GATED_MODELS
VARIANTS = {
    "top1": dict(routing="top1"),
    "position": dict(gate_pool="position"),
    "top1-position": dict(routing="top1", gate_pool="position"),
}


def blocks(model: nn.Module) -> list[InherBlock]:
    return [m for m in model.modules() if isinstance(m, InherBlock)]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(MODELS))
def test_full_rank_variant_reproduces_the_teacher(name: str, variant: str) -> None:
    teacher, batch = MODELS[name]()
    student = inherit(teacher, ExperimentalConfig(rank="full", experts=3, init="svd", **VARIANTS[variant]), progress=False)
    gated = blocks(student)
    assert gated and all(b.gate is not None for b in gated)
    for b in gated:
        assert b.routing == VARIANTS[variant].get("routing", "soft")
        assert b.gate_pool == VARIANTS[variant].get("gate_pool", "mean")
    assert tm.rel_err(tm.run(student.eval(), batch), tm.run(teacher, batch)) <= 1e-5


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(MODELS))
def test_low_rank_variant_equals_single_expert_at_init(name: str, variant: str) -> None:
    teacher, batch = MODELS[name]()
    one = inherit(teacher, ExperimentalConfig(rank=0.5, experts=1, init="whiten"), calib=[batch], progress=False).eval()
    cfg = ExperimentalConfig(rank=0.5, experts=3, init="whiten", **VARIANTS[variant])
    three = inherit(teacher, cfg, calib=[batch], plan=one.inhernet_plan, progress=False).eval()
    assert tm.rel_err(tm.run(three, batch), tm.run(one, batch)) <= 1e-5
    for block in blocks(three):
        if block.routing == "top1":
            # Equal experts (the mean of the zero-sum deviations: U_r S_r), a random gate routing them.
            assert expert_spread(block) == 0.0
            assert block.gate.weight.abs().max() > 0
        else:
            assert expert_spread(block) == pytest.approx(cfg.expert_noise, rel=1e-3)


def test_top1_routes_each_input_to_one_expert_and_gate_gets_gradient() -> None:
    teacher, _ = tm.mlp()
    student = inherit(teacher, ExperimentalConfig(rank=4, experts=3, init="svd", routing="top1"), progress=False)
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    nn.functional.mse_loss(student(x), torch.randn(64, 5)).backward()
    for block in blocks(student):
        logits = block.gate(torch.randn(64, block.rank))
        onehot = block.gate_probs(logits)
        assert torch.equal(onehot.sum(-1), torch.ones(64)) and set(onehot.unique().tolist()) == {0.0, 1.0}
        assert block.gate.weight.grad.abs().max() > 0, "top-1's gate must receive a gradient"
    # A random gate spreads the inputs over the experts (not all on one).
    assert all(float(p.max()) < 1 for p in gate_means(student, [x]).values())


def _train(cfg: InherConfig, steps: int = 30) -> nn.Module:
    teacher, _ = tm.mlp()
    student = inherit(teacher, cfg, progress=False).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g)
    target = torch.sin(3 * x[:, :5]) + x[:, 5:10] ** 2
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(student(x), target).backward()
        opt.step()
    return student


def test_top1_experts_diverge_through_routing_and_merge_says_how() -> None:
    student = _train(ExperimentalConfig(rank=4, experts=3, init="svd", routing="top1"))
    x = torch.randn(32, 12)
    for block in blocks(student):
        assert expert_spread(block) > 1e-3, "top-1 experts must diverge from their common init"
    with pytest.raises(ValueError, match="needs calib"):
        merge_experts(copy.deepcopy(student))
    merged = merge_experts(copy.deepcopy(student), [x])
    assert all(b.experts == 1 and b.gate is None and b.routing == "soft" for b in blocks(merged))
    # The merged up-projection is the routing-frequency mixture of the experts.
    means = gate_means(student, [x])
    for name, block in student.named_modules():
        if isinstance(block, InherBlock):
            p = means[name]
            want = torch.einsum("h,hmr->mr", p, block.expert_weights().double()).float()
            got = merged.get_submodule(name).up.weight
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_top1_at_init_merges_exactly_without_calib() -> None:
    teacher, batch = tm.cnn()
    student = inherit(teacher, ExperimentalConfig(rank=0.5, experts=3, init="svd", routing="top1"), progress=False).eval()
    want = tm.run(student, batch)
    merged = merge_experts(copy.deepcopy(student))
    assert tm.rel_err(tm.run(merged, batch), want) <= 1e-5


def test_per_position_conv_gate_varies_over_positions() -> None:
    teacher, batch = tm.cnn()
    cfg = ExperimentalConfig(rank=0.5, experts=3, init="svd", gate_pool="position")
    student = inherit(teacher, cfg, progress=False).eval()
    block = blocks(student)[0]
    block.gate.weight.data.normal_()
    seen = []
    h = block.gate.register_forward_hook(lambda _m, _i, out: seen.append(out))
    tm.run(student, batch)
    h.remove()
    logits = seen[0]  # (N, H, W, h): one gate per position
    assert logits.dim() == 4 and logits.shape[-1] == 3
    assert logits.flatten(1, 2).std(1).max() > 0


def test_gate_lr_scale_gives_the_gates_their_own_param_groups() -> None:
    from inhernet.distillation import DistillModule

    teacher, _ = tm.mlp()
    student = inherit(teacher, ExperimentalConfig(rank=4, experts=3, init="svd"), progress=False)
    gate_ids = {id(p) for b in blocks(student) for p in b.gate.parameters()}
    module = DistillModule(student, teacher, ExperimentalDistillConfig(lr=2e-3, gate_lr_scale=10.0))
    groups = module.configure_optimizers()["optimizer"].param_groups
    gate_groups = [g for g in groups if any(id(p) in gate_ids for p in g["params"])]
    assert gate_groups and all(g["lr"] == pytest.approx(2e-2) for g in gate_groups)
    assert all(id(p) in gate_ids for g in gate_groups for p in g["params"])
    assert sum(len(g["params"]) for g in gate_groups) == len(gate_ids)
    assert all(g["lr"] == pytest.approx(2e-3) for g in groups if not any(g is q for q in gate_groups))
    # Without the option, nothing changes: two groups (decayed weights, the rest).
    plain = DistillModule(student, teacher, DistillConfig(lr=2e-3)).configure_optimizers()["optimizer"]
    assert len(plain.param_groups) == 2


def test_option_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="routing must be one of"):
        ExperimentalConfig(routing="top2")
    with pytest.raises(ValueError, match="gate_pool must be one of"):
        ExperimentalConfig(gate_pool="max")
    with pytest.raises(ValueError, match="gate_lr_scale"):
        ExperimentalDistillConfig(gate_lr_scale=0)
    teacher, _ = tm.mlp()
    block = blocks(inherit(teacher, ExperimentalConfig(rank=4, experts=3, init="svd"), progress=False))[0]
    with pytest.raises(ValueError, match="routing must be one of"):
        configure_gates(block, routing="hard")
    with pytest.raises(ValueError, match="gate_noise"):
        configure_gates(block, routing="top1", gate_noise=-1.0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_save_and_load_with_their_routing(tmp_path, variant: str) -> None:
    from inhernet import load, save

    teacher, batch = tm.cnn()
    student = inherit(teacher, ExperimentalConfig(rank=0.5, experts=3, init="svd", **VARIANTS[variant]), progress=False)
    g = torch.Generator().manual_seed(0)
    for b in blocks(student):  # distinct experts and an input-dependent gate: the routing matters
        b.gate.weight.data.normal_(generator=g)
        b.up.weight.data.add_(0.1 * torch.randn(b.up.weight.shape, generator=g))
    student.eval()
    want = tm.run(student, batch)
    loaded = load(save(student, tmp_path / "m"), copy.deepcopy(teacher)).eval()
    for a, b in zip(blocks(student), blocks(loaded), strict=True):
        assert (a.routing, a.gate_pool) == (b.routing, b.gate_pool)
    assert tm.rel_err(tm.run(loaded, batch), want) <= 1e-6
    # Loaded as the paper's soft gate, the model would compute something else.
    soft = load(save(student, tmp_path / "s"), copy.deepcopy(teacher)).eval()
    for b in blocks(soft):
        b.routing, b.gate_pool = "soft", "mean"
    assert tm.rel_err(tm.run(soft, batch), want) > 1e-3
