"""layerdrop-kd: a DistilBERT-style copy keeping every other layer, and its sizing against InherNet."""

from __future__ import annotations

import pytest
import torch

from inhernet import InherConfig, inherit
from inhernet_bench.baselines import MethodContext, build_student, drop_layers, layer_stack, spread_layers
from inhernet_bench.baselines.layerdrop import block_influence, most_important
from inhernet_bench.baselines.methods import LAYERDROP_SHARE
from tiny_models import bert_small, bert_tiny, llama_tiny, mlp, n_params


def test_keeps_every_other_layer_with_the_teachers_weights():
    teacher, batch = bert_small()
    student = drop_layers(teacher)
    name, stack = layer_stack(student)
    assert name == "bert.encoder.layer" and len(stack) == 2 and student.config.num_hidden_layers == 2
    assert len(layer_stack(teacher)[1]) == 4  # the teacher is untouched
    for new, old in ((0, 0), (1, 2)):
        kept = stack[new].state_dict()
        for key, value in teacher.bert.encoder.layer[old].state_dict().items():
            assert torch.equal(kept[key], value)
    assert student(**batch).logits.shape == teacher(**batch).logits.shape


def test_llama_cache_indices_are_renumbered():
    teacher, ids = llama_tiny()
    student = drop_layers(teacher, [0, 3])
    _, stack = layer_stack(student)
    assert [layer.self_attn.layer_idx for layer in stack] == [0, 1]
    assert student.config.num_hidden_layers == 2
    out = student.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 11)


@pytest.mark.parametrize(("n", "k", "want"), [(6, 3, [0, 2, 4]), (6, 4, [0, 2, 3, 5]), (5, 1, [0]), (4, 4, [0, 1, 2, 3])])
def test_spread_layers(n, k, want):
    assert spread_layers(n, k) == want


def test_layerdrop_kd_is_never_smaller_than_inhernet():
    teacher, _ = bert_small()
    for budget in (0.3, 0.9):
        ctx = MethodContext(teacher, budget, experts=1, calib=[], seed=0)
        ctx.reference = inherit(teacher, InherConfig(budget=budget, experts=1, init="svd"), progress=False)
        student = build_student("layerdrop-kd", ctx)
        assert n_params(student) >= n_params(ctx.reference)
        layers = student.config.num_hidden_layers
        assert layers == 2 if budget == 0.3 else layers > 2


def test_errors_name_the_problem():
    model, _ = mlp()
    with pytest.raises(ValueError, match="no stack of repeated layers"):
        drop_layers(model)
    teacher, _ = bert_tiny()
    with pytest.raises(ValueError, match="outside"):
        drop_layers(teacher, [5])


# -- choosing the blocks by importance (Block Influence) -------------------------------------------------
def _identity_llama(block: int):
    """llama_tiny with block ``block`` an identity: its attention and MLP add nothing to the residual stream."""
    teacher, ids = llama_tiny()
    layer = teacher.model.layers[block]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    return teacher, ids


def _identity_bert(block: int):
    """bert_small with block ``block`` an identity: its two residual branches add zero, and the post-LayerNorm
    of an already normalised hidden state (unit gain, zero bias) gives it back."""
    teacher, batch = bert_small()
    layer = teacher.bert.encoder.layer[block]
    with torch.no_grad():
        for dense in (layer.attention.output.dense, layer.output.dense):
            dense.weight.zero_()
            dense.bias.zero_()
    return teacher, batch


def test_an_identity_block_has_no_influence_and_is_dropped_first():
    teacher, ids = _identity_llama(2)
    scores = block_influence(teacher, [ids, ids[:1]])
    assert len(scores) == 4 and scores[2] < 1e-6 < min(s for i, s in enumerate(scores) if i != 2)
    student = drop_layers(teacher, 3, by="importance", calib=[ids])
    _, stack = layer_stack(student)
    assert len(stack) == 3 and student.config.num_hidden_layers == 3
    for new, old in zip(range(3), (0, 1, 3), strict=True):
        assert stack[new].mlp.down_proj.weight.equal(teacher.model.layers[old].mlp.down_proj.weight)
    # the dropped block did nothing: the student computes what the teacher computes
    torch.testing.assert_close(student(ids).logits, teacher(ids).logits, rtol=1e-5, atol=1e-5)
    assert [layer.self_attn.layer_idx for layer in stack] == [0, 1, 2]


def test_importance_works_on_bert_with_padding():
    teacher, batch = _identity_bert(1)
    scores = block_influence(teacher, [batch])
    assert scores[1] < 1e-4 < min(scores[0], scores[2], scores[3])
    assert most_important(scores, 3) == [0, 2, 3]
    # padded positions are left out: changing what sits under the mask changes nothing
    other = {**batch, "input_ids": batch["input_ids"].clone()}
    other["input_ids"][1, 6:] = 7
    assert block_influence(teacher, [other]) == pytest.approx(scores, rel=1e-9, abs=1e-12)


def test_layerdrop_kd_keeps_the_most_important_blocks_with_calibration_data():
    teacher, batch = _identity_bert(2)
    scores = block_influence(teacher, [batch])
    for budget in (0.3, 0.75):
        ctx = MethodContext(teacher, budget, experts=1, calib=[batch], seed=0)
        ctx.reference = inherit(teacher, InherConfig(budget=budget, experts=1, init="svd"), progress=False)
        student = build_student("layerdrop-kd", ctx)
        layers = student.config.num_hidden_layers
        assert n_params(student) >= n_params(ctx.reference)
        # the count is the smallest from half of the stack up that reaches the InherNet's size
        assert layers == 2 or n_params(drop_layers(teacher, layers - 1)) < n_params(ctx.reference)
        assert layers == (2 if budget == 0.3 else 3)
        kept = most_important(scores, layers)
        assert 2 not in kept  # the identity block goes first
        for new, old in enumerate(kept):
            assert student.bert.encoder.layer[new].output.dense.weight.equal(
                teacher.bert.encoder.layer[old].output.dense.weight
            )


def test_most_important_and_keep_counts():
    assert most_important([0.3, 0.1, 0.3, 0.2], 2) == [0, 2]  # a tie keeps the earlier layer
    assert most_important([0.3, 0.1, 0.3, 0.2], 1) == [0]
    teacher, _ = bert_small()
    assert layer_stack(drop_layers(teacher, 3))[1][1].output.dense.weight.equal(
        teacher.bert.encoder.layer[2].output.dense.weight  # spread: [0, 2, 3]
    )


def test_importance_errors_name_the_problem():
    teacher, batch = bert_tiny()
    with pytest.raises(ValueError, match="needs calib="):
        drop_layers(teacher, 1, by="importance")
    with pytest.raises(ValueError, match="by must be one of"):
        drop_layers(teacher, 1, by="random")
    with pytest.raises(ValueError, match="keep=<number of layers>"):
        drop_layers(teacher, [0], by="importance", calib=[batch])
    with pytest.raises(ValueError, match="no batch"):
        block_influence(teacher, [])
    with pytest.raises(ValueError, match="cannot keep 3 of 2"):
        drop_layers(teacher, 3, by="importance", calib=[batch])
    with pytest.raises(ValueError, match="cannot keep 0 of 2"):
        most_important([0.1, 0.2], 0)


def test_inhernet_layerdrop_drops_the_least_important_blocks_then_inherits_at_the_budget():
    """About half of the cut paid by whole blocks (the least important by Block Influence), the rest by rank
    cuts at the same budget: 4 tiny Llama blocks of ~9k parameters, 60% of ~40k kept: one block dropped."""
    teacher, ids = llama_tiny()
    calib = [ids, ids.flip(0)]
    ctx = MethodContext(teacher, 0.6, experts=1, calib=calib, seed=0)
    ctx.reference = inherit(teacher, ctx.config(), calib=calib, progress=False)
    student = build_student("inhernet-layerdrop", ctx)
    assert student.config.num_hidden_layers == 3
    assert student.inhernet_plan.drop.kept == most_important(block_influence(teacher, calib), 3)
    assert 0.98 * ctx.target <= n_params(student) <= ctx.target
    assert student.inhernet_plan.factorised and student.inhernet_plan.config.drop_blocks == LAYERDROP_SHARE
    assert student(ids).logits.shape == teacher(ids).logits.shape
    with pytest.raises(ValueError, match="sized in parameters"):
        build_student("inhernet-layerdrop", MethodContext(teacher, 0.6, experts=1, calib=calib, seed=0, match="macs"))


def test_feature_matching_pairs_each_kept_block_with_the_teacher_block_it_came_from():
    """A block-dropped stack is renumbered: student block 1 is teacher block 2 after block 1 went. Matching by
    name alone would compare it with teacher block 1; with an identity block dropped, the correct pairs match
    the teacher exactly."""
    from inhernet.distillation import FeatureCapture, feature_loss, match_feature_names
    from inhernet.stack import KEPT_LAYERS

    teacher, ids = _identity_llama(1)
    student = drop_layers(teacher, [0, 2, 3])
    pairs = match_feature_names(student, teacher, ["model.layers.[0-9]", "model.layers.*.mlp"])
    assert pairs == [
        ("model.layers.0", "model.layers.0"), ("model.layers.0.mlp", "model.layers.0.mlp"),
        ("model.layers.1", "model.layers.2"), ("model.layers.1.mlp", "model.layers.2.mlp"),
        ("model.layers.2", "model.layers.3"), ("model.layers.2.mlp", "model.layers.3.mlp"),
    ]
    with FeatureCapture(student, [s for s, _ in pairs]) as s_cap, torch.no_grad():
        student(ids)
    every_block = [name for name, _ in teacher.named_modules() if name.startswith("model.layers.")]
    with FeatureCapture(teacher, every_block) as t_cap, torch.no_grad():
        teacher(ids)
    assert feature_loss(s_cap.features, {s: t_cap.features[t] for s, t in pairs}).item() < 1e-10
    by_name = {s: t_cap.features[s] for s, _ in pairs}  # what matching by name alone compared: the wrong blocks
    assert feature_loss(s_cap.features, by_name, "cosine").item() > 0.1

    # a second cut composes with the first; the teacher itself was never cut
    again = drop_layers(student, [1, 2])
    assert getattr(again, KEPT_LAYERS) == ("model.layers", (2, 3)) and not hasattr(teacher, KEPT_LAYERS)
    assert match_feature_names(again, teacher, ["model.layers.[0-9]"]) == [
        ("model.layers.0", "model.layers.2"), ("model.layers.1", "model.layers.3")
    ]


def test_an_undone_cut_forgets_its_record():
    from inhernet.stack import KEPT_LAYERS, keep_layers_

    teacher, _ = llama_tiny()
    undo = keep_layers_(teacher, [1, 3])
    assert getattr(teacher, KEPT_LAYERS) == ("model.layers", (1, 3))
    undo()
    assert not hasattr(teacher, KEPT_LAYERS) and teacher.config.num_hidden_layers == 4
