"""Family-resolved defaults: InherConfig's auto fields, the published recipe one argument away."""

from __future__ import annotations

import pytest

from inhernet import InherConfig, inherit, load, plan, save
from inhernet.families import FAMILY_DEFAULTS, model_family
from inhernet.layers import InherBlock
from tiny_models import bert_tiny, cnn, gpt2_tiny, llama_tiny, mlp


@pytest.mark.parametrize(
    ("factory", "family"),
    [(cnn, "conv"), (mlp, "other"), (bert_tiny, "encoder"), (llama_tiny, "causal-lm"), (gpt2_tiny, "causal-lm")],
)
def test_family_detection(factory, family):
    model, _ = factory()
    assert model_family(model) == family


def test_auto_fields_resolve_per_family_and_are_recorded(tmp_path):
    model, x = llama_tiny()
    cfg = InherConfig(budget=0.8)
    assert (cfg.experts, cfg.min_rank_ratio, cfg.calibration, cfg.family) == (None, None, None, None)
    resolved = plan(model, cfg, calib=[x]).config
    want = FAMILY_DEFAULTS["causal-lm"]
    assert (resolved.experts, resolved.min_rank_ratio, resolved.calibration, resolved.family) == (
        want.experts, want.min_rank_ratio, want.calibration, "causal-lm")
    conv, batch = cnn()
    student = inherit(conv, InherConfig(budget=0.6), calib=[batch], progress=False)
    got = student.inhernet_plan.config
    assert (got.experts, got.calibration, got.min_rank_ratio, got.family) == (1, "one-pass", 0.0, "conv")
    save(student, tmp_path / "s")
    loaded = load(tmp_path / "s", base=cnn()[0])
    assert loaded.inhernet_config == got  # the resolved config, not the auto one, is saved


def test_explicit_fields_and_the_paper_recipe_win():
    model, batch = cnn()
    paper = InherConfig.paper(budget=0.6)
    assert (paper.experts, paper.calibration, paper.min_rank_ratio) == (3, "one-pass", 0.0)
    student = inherit(model, paper, calib=[batch], progress=False)
    assert student.inhernet_plan.config.experts == 3
    blocks = [b for b in student.modules() if isinstance(b, InherBlock)]
    assert blocks and all(b.experts == 3 and b.gate is not None for b in blocks)
    forced = InherConfig(budget=0.6, family="causal-lm", experts=2).resolved(model)
    assert (forced.experts, forced.calibration, forced.min_rank_ratio) == (2, "sequential", 0.25)
    with pytest.raises(ValueError, match="family"):
        InherConfig(family="rnn")


def test_causal_default_calibrates_sequentially_on_padded_batches():
    """GPT-2 passes its KV cache positionally: the sequential default must not let it grow across batches."""
    import torch

    model, _ = gpt2_tiny()
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    calib = [{"input_ids": torch.randint(0, 100, (2, 8)), "attention_mask": mask},
             {"input_ids": torch.randint(0, 100, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}]
    student = inherit(model, InherConfig(budget=0.7), calib=calib, progress=False)
    assert student.inhernet_plan.config.calibration == "sequential"
    assert torch.isfinite(student(**calib[0]).logits).all()


def test_the_family_floor_gives_way_to_a_low_budget_but_a_chosen_floor_does_not():
    model, batch = gpt2_tiny()
    with pytest.warns(UserWarning, match="rank floor min_rank_ratio=0.25 does not fit"):
        p = plan(model, InherConfig(budget=0.3, init="svd", drop_blocks=0), calib=[batch])  # rank cuts alone
    assert p.config.family == "causal-lm" and 0.98 * p.target_params <= p.total_params <= p.target_params
    with pytest.raises(ValueError, match="unreachable"):
        plan(model, InherConfig(budget=0.3, init="svd", min_rank_ratio=0.3, drop_blocks=0), calib=[batch])
    # Where the budget leaves room, the family's floor holds: no layer below a quarter of its rank.
    roomy = plan(model, InherConfig(budget=0.8, init="svd", drop_blocks=0), calib=[batch])
    assert all(r.rank >= 0.25 * r.max_rank - 1 for r in roomy.layers if r.factorised)
