"""prune-kd: Torch-Pruning of a copy of the teacher to at least the InherNet's size, then KD."""

from __future__ import annotations

import pytest
import torch
from test_latency_budget import FakeCosts
from torch.utils.data import DataLoader, TensorDataset

from inhernet import DistillConfig, InherConfig, distill, inherit
from inhernet.costs import count_macs
from inhernet.pruning import LATENCY_ROUND_TO, prune_for
from inhernet_bench.baselines import MethodContext, build_student
from inhernet_bench.baselines.prune import attention_heads, default_importance, prune, prune_to_size
from tiny_models import bert_small, cnn, llama_tiny, mlp, n_params, run, same_state, state_copy, strided_cnn

pytest.importorskip("torch_pruning")


def _context(teacher, batch, budget, match="params"):
    ctx = MethodContext(teacher, budget, experts=1, calib=[batch], seed=0, match=match)
    cfg = InherConfig(**{"budget" if match == "params" else "macs": budget}, experts=1, init="svd")
    ctx.reference = inherit(teacher, cfg, calib=[batch] if match == "macs" else None, progress=False)
    return ctx


@pytest.mark.filterwarnings("ignore:the plan reaches")
@pytest.mark.parametrize("factory", [mlp, cnn, bert_small])
@pytest.mark.parametrize("budget", [0.3, 0.6])
def test_pruned_teacher_is_at_least_the_inhernet_size_and_close(factory, budget):
    teacher, batch = factory()
    before = state_copy(teacher)
    ctx = _context(teacher, batch, budget)
    student = build_student("prune-kd", ctx)
    target = n_params(ctx.reference)
    # Channels are whole: the pruned size is the smallest one reachable at or above the target (within
    # the bisection's 1% stopping tolerance), whatever the step between two channel counts.
    reachable = {n_params(prune(teacher, batch, r / 40)) for r in range(38)}
    assert target <= n_params(student) <= max(1.01 * target, min(n for n in reachable if n >= target))
    assert n_params(student) <= 1.06 * target or factory is cnn  # 3-6 channel convs: steps of ~10%
    assert same_state(state_copy(teacher), before)  # the teacher is untouched
    out, want = run(student, batch), run(teacher, batch)
    assert out.shape == want.shape and torch.isfinite(out).all()


@pytest.mark.filterwarnings("ignore:the plan reaches")
def test_mac_match_and_taylor_importance():
    teacher, batch = strided_cnn(16), torch.randn(4, 3, 16, 16)
    ctx = _context(teacher, batch, 0.3, match="macs")
    student = build_student("prune-kd", ctx)
    assert ctx.target <= count_macs(student, batch) <= 1.05 * ctx.target
    ctx.extras["prune_importance"] = "taylor"
    taylor = build_student("prune-kd", ctx)
    assert count_macs(taylor, batch) >= ctx.target
    assert all(p.grad is None for p in taylor.parameters())


def test_default_importance_is_taylor_for_causal_lms_only():
    # L2 magnitude wrecks SmolLM2's FFN (zero-shot perplexity ~400k against ~130 with Taylor)
    assert default_importance(llama_tiny()[0]) == "taylor"
    assert {default_importance(factory()[0]) for factory in (mlp, cnn, bert_small)} == {"l2"}
    ctx = MethodContext(llama_tiny()[0], 0.5, experts=1, calib=[])
    assert ctx.extras["prune_importance"] == "taylor"  # what prune-kd is handed unless told


def test_output_layer_and_bert_heads_stay_consistent():
    teacher, batch = bert_small()
    student = prune(teacher, batch, 0.5)
    assert student.classifier.out_features == teacher.classifier.out_features
    for layer in student.bert.encoder.layer:
        attn = layer.attention.self
        assert 1 <= attn.num_attention_heads < teacher.config.num_attention_heads
        assert attn.num_attention_heads * attn.attention_head_size == attn.query.out_features
    assert student.bert.embeddings.word_embeddings.embedding_dim < teacher.config.hidden_size
    assert len(attention_heads(teacher)) == 3 * teacher.config.num_hidden_layers


def test_kd_runs_on_the_pruned_model():
    teacher, batch = cnn()
    student = prune(teacher, batch, 0.4)
    before = state_copy(student)
    x = torch.randn(16, 3, 8, 8)
    loader = DataLoader(TensorDataset(x, torch.randint(0, 4, (16,))), batch_size=8)
    history = distill(student, teacher, loader, None, DistillConfig(steps=3, lr=1e-2, progress=False))
    assert history["steps"] == 3 and not same_state(state_copy(student), before)


def test_errors_name_the_problem():
    teacher, ids = llama_tiny()
    with pytest.raises(ValueError, match="causal LM"):
        prune(teacher, ids, 0.5)
    model, x = mlp()
    with pytest.raises(ValueError, match="importance"):
        prune(model, x, 0.5, importance="l1")
    with pytest.raises(ValueError, match="ratio"):
        prune(model, x, 1.5)
    with pytest.raises(ValueError, match="already below"):
        prune_to_size(model, x, 10 * n_params(model), n_params)
    with pytest.raises(ValueError, match="far above"):
        prune_to_size(model, x, 1, n_params, max_ratio=0.05)


def test_a_latency_budget_prunes_channels_in_multiples_of_eight():
    """Measured time is not monotone in odd channel counts; under a latency budget every pruned layer keeps
    a multiple of 8 channels, under other budgets Torch-Pruning's own counts."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 48, 3), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(48, 10),
    ).eval()
    x = torch.randn(4, 3, 12, 12)

    def widths(m):
        return [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)]

    assert any(w % LATENCY_ROUND_TO for w in widths(prune(model, x, 0.3)))
    assert all(w % LATENCY_ROUND_TO == 0 for w in widths(prune(model, x, 0.3, round_to=LATENCY_ROUND_TO)))
    pruned, record = prune_for(InherConfig(latency=0.5), model, x, 0.3, costs=FakeCosts())
    assert all(w % LATENCY_ROUND_TO == 0 for w in widths(pruned)) and record.latency_ns < record.teacher_latency_ns
    same, _ = prune_for(InherConfig(budget=0.5), model, x, 0.3)
    assert widths(same) == widths(prune(model, x, 0.3))


def test_prune_frees_its_dependency_graph():
    """Torch-Pruning's graph nodes form reference cycles that hold the trace's autograd graph, the activations of
    the whole example: left to the collector's schedule, prune="auto"'s 10-20 calls ran a 24 GiB machine out of
    memory (EfficientNet-Lite0, 500 images: 1.8 GiB per call)."""
    import gc

    from torch_pruning.dependency import Dependency, Node

    teacher, x = cnn()
    gc.collect()
    gc.disable()  # only prune()'s own collection may free the graph
    try:
        prune(teacher, x, 0.3)
        alive = [o for o in gc.get_objects() if isinstance(o, (Node, Dependency))]
    finally:
        gc.enable()
    assert not alive
