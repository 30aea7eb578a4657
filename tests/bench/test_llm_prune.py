"""prune-kd for causal LMs: FFN channels of Llama-style MLPs removed, the tied embeddings untouched."""

from __future__ import annotations

import pytest
import torch

import inhernet
from inhernet import InherConfig, inherit
from inhernet_bench.baselines import MethodContext, build_student
from inhernet_bench.baselines.llm_prune import (
    channel_importance,
    gated_mlps,
    prune_ffn,
    prune_llm,
    prune_llm_to_size,
)
from inhernet_bench.baselines.prune import prune_to_size
from tiny_models import gpt2_tiny, llama_tiny, n_params, same_state, state_copy

HIDDEN, WIDTH, LAYERS = 32, 64, 4  # llama_tiny
PER_CHANNEL = 3 * HIDDEN  # a gate row, an up row and a down column


def _tied(model) -> bool:
    return model.lm_head.weight is model.model.embed_tokens.weight


def _dead_channels(n: int):
    """llama_tiny whose first ``n`` FFN channels of every layer are zero (they contribute nothing)."""
    teacher, ids = llama_tiny()
    with torch.no_grad():
        for layer in teacher.model.layers:
            layer.mlp.gate_proj.weight[:n] = 0
            layer.mlp.up_proj.weight[:n] = 0
            layer.mlp.down_proj.weight[:, :n] = 0
    return teacher, ids


def test_removing_no_channel_reproduces_the_teacher_exactly():
    teacher, ids = llama_tiny()
    before = state_copy(teacher)
    for student in (prune_ffn(teacher, [range(WIDTH)] * LAYERS), prune_llm(teacher, ids, 0.0)):
        assert torch.equal(student(ids).logits, teacher(ids).logits)
        assert _tied(student) and n_params(student) == n_params(teacher)
    assert same_state(state_copy(teacher), before) and _tied(teacher)


def test_pruned_llama_runs_keeps_the_tie_and_its_config_describes_it(tmp_path):
    from transformers import LlamaForCausalLM

    teacher, ids = llama_tiny()
    student = prune_llm(teacher, ids, 0.5)
    assert _tied(student)
    assert student.model.embed_tokens.weight.shape == teacher.model.embed_tokens.weight.shape
    assert [m.gate_proj.out_features for _, m in gated_mlps(student)] == [WIDTH // 2] * LAYERS
    assert student.config.intermediate_size == WIDTH // 2 and teacher.config.intermediate_size == WIDTH
    assert n_params(teacher) - n_params(student) == LAYERS * (WIDTH // 2) * PER_CHANNEL
    logits = student(ids).logits
    assert logits.shape == teacher(ids).logits.shape and torch.isfinite(logits).all()
    assert student.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (2, 11)
    # uniform pruning: a transformers save/load round trip rebuilds it exactly
    student.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(again(ids).logits, logits) and _tied(again)
    # inhernet.save stores inherited models only, and says so
    with pytest.raises(ValueError, match="no InherNet blocks"):
        inhernet.save(student, tmp_path / "inhernet")


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_the_least_important_channels_go_first(importance):
    teacher, ids = _dead_channels(8)
    scores = channel_importance(teacher, ids, importance)
    assert all(float(s[:8].max()) == 0 < float(s[8:].min()) for s in scores)
    assert all(p.grad is None for p in teacher.parameters())
    frozen = teacher.requires_grad_(False)  # a frozen teacher is scored alike and stays frozen
    assert all(torch.equal(a, b) for a, b in zip(channel_importance(frozen, ids, importance), scores, strict=True))
    assert not any(p.requires_grad for p in frozen.parameters()) and frozen.training is False
    student = prune_llm(teacher, ids, 8 / WIDTH, importance=importance)
    for (_, got), (_, want) in zip(gated_mlps(student), gated_mlps(teacher), strict=True):
        assert torch.equal(got.up_proj.weight, want.up_proj.weight[8:])
        assert torch.equal(got.down_proj.weight, want.down_proj.weight[:, 8:])
    # the removed channels added nothing: the outputs stay the teacher's
    torch.testing.assert_close(student(ids).logits, teacher(ids).logits, rtol=1e-5, atol=1e-6)


def test_global_pruning_takes_more_from_the_layer_with_weak_channels():
    teacher, ids = llama_tiny()
    with torch.no_grad():
        mlp = teacher.model.layers[1].mlp
        for w in (mlp.gate_proj.weight[:24], mlp.up_proj.weight[:24], mlp.down_proj.weight[:, :24]):
            w.mul_(0.01)
    student = prune_llm(teacher, ids, 24 / (LAYERS * WIDTH), global_pruning=True)
    widths = [m.gate_proj.out_features for _, m in gated_mlps(student)]
    assert widths == [WIDTH, WIDTH - 24, WIDTH, WIDTH]  # every weak channel, and only they
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[1].mlp.up_proj.weight[24:])
    assert student.config.intermediate_size == WIDTH  # widths differ: the config keeps the teacher's
    assert torch.isfinite(student(ids).logits).all() and _tied(student)


@pytest.mark.parametrize("global_pruning", [False, True])
@pytest.mark.parametrize("share", [0.9, 0.7])
def test_sized_to_the_smallest_model_at_or_above_the_target(share, global_pruning):
    teacher, ids = llama_tiny()
    full = n_params(teacher)
    target = int(share * full)
    student = prune_llm_to_size(teacher, ids, target, n_params, global_pruning=global_pruning)
    removed = sum(WIDTH - m.gate_proj.out_features for _, m in gated_mlps(student))
    step = PER_CHANNEL * (1 if global_pruning else LAYERS)  # the size moves in these steps
    assert target <= n_params(student) < target + step
    assert removed * PER_CHANNEL == full - n_params(student) and _tied(student)
    if not global_pruning:
        assert len({m.gate_proj.out_features for _, m in gated_mlps(student)}) == 1


@pytest.mark.filterwarnings("ignore:the plan reaches")
def test_prune_kd_builds_a_pruned_causal_lm_at_least_the_inhernets_size():
    teacher, ids = llama_tiny()
    before = state_copy(teacher)
    ctx = MethodContext(teacher, 0.8, experts=1, calib=[ids], seed=0)
    ctx.reference = inherit(teacher, InherConfig(budget=0.8, experts=1, init="svd", drop_blocks=0), progress=False)
    for importance in ("l2", "taylor"):
        ctx.extras["prune_importance"] = importance
        student = build_student("prune-kd", ctx)
        assert ctx.target <= n_params(student) < ctx.target + LAYERS * PER_CHANNEL
        assert _tied(student) and torch.isfinite(student(ids).logits).all()
    assert same_state(state_copy(teacher), before)


def test_errors_name_the_problem():
    teacher, ids = llama_tiny()
    with pytest.raises(ValueError, match="importance must be one of"):
        prune_llm(teacher, ids, 0.5, importance="l1")
    with pytest.raises(ValueError, match="needs an example"):
        channel_importance(teacher, None, "taylor")
    with pytest.raises(ValueError, match="ratio must be"):
        prune_llm(teacher, ids, 1.0)
    with pytest.raises(ValueError, match="max_ratio"):
        prune_llm(teacher, ids, 0.5, max_ratio=1.5)
    with pytest.raises(ValueError, match="already below"):
        prune_to_size(teacher, ids, 2 * n_params(teacher), n_params)
    with pytest.raises(ValueError, match="far above the target"):
        prune_to_size(teacher, ids, n_params(teacher) // 4, n_params)
    with pytest.raises(ValueError, match="4 gated MLPs"):
        prune_ffn(teacher, [range(WIDTH)])
    with pytest.raises(ValueError, match="distinct channels"):
        prune_ffn(teacher, [[0, 0]] + [range(WIDTH)] * 3)
    with pytest.raises(ValueError, match="distinct channels"):
        prune_ffn(teacher, [[]] + [range(WIDTH)] * 3)
    gpt2, x = gpt2_tiny()
    with pytest.raises(ValueError, match="no gated MLP"):
        prune_to_size(gpt2, x, n_params(gpt2) // 2, n_params)
