"""inhernet_bench.scripts.smollm2_shared_qkv: the joint (shared down-projection) factorisation of layers that read one
input, and its use inside sequential calibration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark_scripts import load_benchmark
from inhernet import InherConfig, inherit
from inhernet.calibration import InputCovariance
from inhernet.decomposition import factorize

N, SIZES = 32, (32, 16, 16)  # q/k/v-like: one input width, three output widths


@pytest.fixture(scope="module")
def sq():
    return load_benchmark("smollm2_shared_qkv")


def _inputs(rows: int = 512, seed: int = 0) -> torch.Tensor:
    """Correlated inputs (a non-trivial whitening), float64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, N, generator=g, dtype=torch.float64) @ torch.randn(N, N, generator=g, dtype=torch.float64)


def _cov(x: torch.Tensor) -> InputCovariance:
    cov = InputCovariance(x.shape[1], diagonal=False)
    cov.update(x)
    return cov


def _whitened_error(ws: list[torch.Tensor], approx: list[torch.Tensor], x: torch.Tensor) -> float:
    return sum(float(((w - a) @ x.T).square().sum()) for w, a in zip(ws, approx, strict=True))


@pytest.mark.parametrize("whiten", [True, False])
def test_full_rank_reproduces_each_output(sq, whiten):
    torch.manual_seed(0)
    linears = [nn.Linear(N, m, bias=True, dtype=torch.float64) for m in SIZES]
    x = _inputs()
    factors, sizes = sq.factorize_shared([lin.weight for lin in linears], _cov(x) if whiten else None)
    assert sizes == list(SIZES)
    full = min(N, sum(SIZES))
    assert factors.max_rank == full
    members = sq.shared_modules(factors, sizes, full, [lin.bias for lin in linears], linears[0].weight)
    for lin, member in zip(linears, members, strict=True):
        assert member.down is members[0].down  # one shared down-projection
        assert (member(x) - lin(x)).abs().max().item() <= 1e-5


def test_parameter_count_and_shared_rank(sq):
    torch.manual_seed(0)
    ranks = [7, 5, 3]
    rank = sq.shared_rank(ranks, N, SIZES)
    separate = sum(r * (N + m) for r, m in zip(ranks, SIZES, strict=True))
    assert rank * (N + sum(SIZES)) <= separate < (rank + 1) * (N + sum(SIZES))
    assert sq.shared_rank([N, 16, 16], N, SIZES) == N  # capped at the stack's full rank
    assert sq.separate_params([7, None, None], N, SIZES) == 7 * (N + 32) + 2 * 16 * N  # dense: d_i n
    ws = [torch.randn(m, N, dtype=torch.float64) for m in SIZES]
    factors, sizes = sq.factorize_shared(ws, _cov(_inputs()))
    group = nn.ModuleList(sq.shared_modules(factors, sizes, rank, [None] * 3, torch.zeros(1)))
    # the shared down counts once: r (n + sum d_i)
    assert sum(p.numel() for p in group.parameters()) == rank * (N + sum(SIZES)) == sq.n_params(group)
    assert all(member.down.weight.dtype == torch.float32 for member in group)  # the teacher's dtype


def test_joint_beats_separate_on_a_shared_input_subspace(sq):
    """Three maps reading one 4-dim subspace of their input: at the separate factorisations' parameters (rank 3
    each) the shared rank is 5 >= 4, so the joint factorisation is exact where the separate ones are not."""
    g = torch.Generator().manual_seed(1)
    basis = torch.randn(4, N, generator=g, dtype=torch.float64)
    ws = [torch.randn(m, 4, generator=g, dtype=torch.float64) @ basis for m in SIZES]
    x = _inputs(seed=2)
    cov = _cov(x)
    ranks = [3, 3, 3]
    rank = sq.shared_rank(ranks, N, SIZES)
    assert rank == 5
    joint, sizes = sq.factorize_shared(ws, cov)
    down, up = joint.truncated(rank)
    shared_err = _whitened_error(ws, [u @ down for u in up.split(sizes)], x)
    separate = [factorize(w, cov) for w in ws]
    separate_err = _whitened_error(ws, [f.up[:, :r] @ f.down[:r] for f, r in zip(separate, ranks, strict=True)], x)
    total = sum(float((w @ x.T).square().sum()) for w in ws)
    assert shared_err <= separate_err
    assert shared_err <= 1e-8 * total < 1e-3 * total <= separate_err
    # the recorded relative errors (from the factors' energies) agree with the direct computation
    err_sep, err_shared = sq.relative_errors(separate, ranks, joint, rank)
    assert err_sep == pytest.approx(separate_err / total, rel=1e-3)
    assert err_shared <= 1e-6
    # per layer: the joint errors, weighted by each layer's energy, add up to the group's
    energies = [float((w @ x.T).square().sum()) for w in ws]
    per_layer = sq.member_errors(separate, ranks, joint, sizes, rank)
    assert sum(e * s for e, (s, _) in zip(energies, per_layer, strict=True)) == pytest.approx(separate_err, rel=1e-3)
    assert all(shared <= 1e-6 for _, shared in per_layer)
    partial = sq.member_errors(separate, [3, None, None], joint, sizes, 2)  # dense layers lose nothing apart
    assert partial[1][0] == partial[2][0] == 0 and partial[0][0] > 0
    direct = [float(((w - u @ down[:2]) @ x.T).square().sum()) / e
              for w, u, e in zip(ws, joint.up[:, :2].split(sizes), energies, strict=True)]
    assert [b for _, b in partial] == pytest.approx(direct, rel=1e-3)


def test_bad_weights_name_the_problem(sq):
    with pytest.raises(ValueError, match="weights is empty"):
        sq.factorize_shared([])
    with pytest.raises(ValueError, match="one input width"):
        sq.factorize_shared([torch.zeros(4, 8), torch.zeros(4, 6)])


def _llama() -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True,
    )
    ids = torch.randint(0, 100, (4, 16))
    return LlamaForCausalLM(config).eval(), [{"input_ids": ids[:2]}, {"input_ids": ids[2:]}]


def _shared_members(model: nn.Module, sq) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, sq.SharedDownLinear)]


def test_sequential_sharing_at_full_rank_reproduces_the_teacher(sq):
    teacher, calib = _llama()
    cfg = InherConfig(rank="full", experts=1, calibration="sequential", include=["*q_proj", "*k_proj", "*v_proj", "*gate_proj", "*up_proj"])
    plan = inherit(teacher, cfg, calib=calib, progress=False).inhernet_plan
    sharing = sq.Sharing(("qkv", "gate-up"), plan.ranks())
    with sharing.active():
        student = inherit(teacher, plan=plan, calib=calib, progress=False)
    assert len(sharing.records) == 4  # 2 blocks x 2 groups
    assert len(_shared_members(student, sq)) == 2 * 5
    with torch.no_grad():
        want, got = teacher(**calib[0]).logits, student(**calib[0]).logits
    assert (got - want).abs().max().item() <= 1e-4
    import inhernet.sequential as sequential

    assert sequential._stage.__name__ == "_stage"  # the library's own, back after the run


@pytest.mark.parametrize("budget", [0.7, 0.5])  # 0.7 keeps k/v dense: they join q's group with their dense cost
def test_sequential_sharing_at_a_budget_spends_no_more_parameters(sq, budget):
    teacher, calib = _llama()
    cfg = InherConfig(budget=budget, experts=1, calibration="sequential", min_rank_ratio=0.25)
    separate = inherit(teacher, cfg, calib=calib, progress=False)
    plan = separate.inhernet_plan
    for groups in (("qkv",), ("gate-up",), ("qk",), ("qkv", "gate-up")):
        sharing = sq.Sharing(groups, plan.ranks())
        with sharing.active():
            student = inherit(teacher, plan=plan, calib=calib, progress=False)
        assert len(sharing.records) == 2 * len(groups)  # every block's groups
        assert len(_shared_members(student, sq)) == sum(len(sq.GROUPS[g]) for g in groups) * 2
        assert sq.n_params(student) <= sq.n_params(separate)
        for record in sharing.records:
            sizes = [student.get_submodule(n).up.out_features for n in record["layers"]]
            assert record["shared_rank"] >= 1
            assert record["shared_rank"] * (N + sum(sizes)) <= sq.separate_params(record["ranks"], N, sizes)
            assert 0 <= record["err_shared"] <= 1 and 0 <= record["err_separate"] <= 1
            assert len(record["layer_errors"]) == len(record["layers"])
        with torch.no_grad():
            assert torch.isfinite(student(**calib[0]).logits).all()
    if budget == 0.7:
        assert None in sharing.records[0]["ranks"]  # the case this budget is here for


def test_render_reports_each_variant_and_the_per_layer_errors(sq):
    group = {"layers": ["m.layers.0.self_attn.q_proj", "m.layers.0.self_attn.v_proj"], "ranks": [4, None],
             "shared_rank": 3, "err_separate": 0.2, "err_shared": 0.1,
             "layer_errors": [{"separate": 0.3, "shared": 0.1}, {"separate": 0.0, "shared": 0.05}]}
    row = {"perplexity": 10.0, "ratio_to_teacher": 2.0, "inherit_s": 1, "eval_s": 1}
    result = {"budget": 0.8, "recipe": sq.RECIPE, "calib_blocks": 2, "test_blocks": 2, "threads": 1,
              "teacher": {"perplexity": 5.0, "params": 100},
              "variants": [{**row, "variant": "separate", "params": 90, "groups_shared": 0, "err_separate": None,
                            "err_shared": None, "groups": []},
                           {**row, "variant": "qkv", "params": 89, "perplexity": 9.0, "groups_shared": 1,
                            "err_separate": 0.2, "err_shared": 0.1, "groups": [group]}]}
    table = sq.render(result, "python -m inhernet_bench.scripts.smollm2_shared_qkv")
    assert "| qkv | 89 | 9.00 |" in table and "-10.0%" in table
    assert "- qkv: q_proj 0.3 -> 0.1, v_proj 0 -> 0.05" in table
