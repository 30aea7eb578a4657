"""layerdrop-kd: a DistilBERT-style copy keeping every other layer, and its sizing against InherNet."""

from __future__ import annotations

import pytest
import torch

from inhernet import InherConfig, inherit
from inhernet.baselines import MethodContext, build_student, drop_layers, layer_stack, spread_layers
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
