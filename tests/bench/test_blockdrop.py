"""InherConfig(drop_blocks=...): whole blocks dropped by Block Influence, the rest of the budget paid by rank cuts."""

from __future__ import annotations

import json

import pytest
import torch

from inhernet import InherConfig, inherit, load, plan, save
from inhernet.blockdrop import blocks_to_drop
from inhernet.families import FAMILY_DEFAULTS
from inhernet.stack import KEPT_LAYERS
from inhernet_bench.baselines import MethodContext, build_student
from inhernet_bench.baselines.layerdrop import block_influence, layer_stack
from tiny_models import llama_tiny, mlp, n_params


def _teacher():
    teacher, ids = llama_tiny()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, 100, (2, 8), generator=g) for _ in range(3)]
    return teacher.eval(), ids, calib


def test_drops_the_least_influential_blocks_then_meets_the_budget_with_rank_cuts():
    teacher, ids, calib = _teacher()
    student = inherit(teacher, InherConfig(budget=0.6, drop_blocks=0.5), calib=calib, progress=False)
    record = student.inhernet_plan.drop
    influence = block_influence(teacher, calib)
    assert record.dropped and len(record.dropped) < 4 and record.of == 4
    # the blocks dropped are the least influential ones
    assert max(influence[i] for i in record.dropped) <= min(influence[i] for i in record.kept)
    assert len(layer_stack(student)[1]) == len(record.kept) == student.config.num_hidden_layers
    assert len(layer_stack(teacher)[1]) == 4  # the teacher is untouched
    # the same absolute budget, paid by blocks and ranks together
    target = int(0.6 * n_params(teacher))
    assert 0.98 * target <= n_params(student) <= target == student.inhernet_plan.target_params
    assert n_params(student) == student.inhernet_plan.total_params
    assert record.params < n_params(teacher) and student.inhernet_plan.factorised  # some rank was left to cut
    assert student.inhernet_plan.config.drop_blocks == 0.5 and student.inhernet_plan.teacher_params == n_params(teacher)
    assert "dropped by Block Influence" in str(student.inhernet_plan.summary())
    assert student(ids).logits.shape == teacher(ids).logits.shape


def test_causal_lms_drop_blocks_by_default_and_zero_drops_none():
    teacher, ids, calib = _teacher()
    default = inherit(teacher, InherConfig(budget=0.4), calib=calib, progress=False)  # half of the cut: a block
    assert default.inhernet_plan.config.drop_blocks == FAMILY_DEFAULTS["causal-lm"].drop_blocks
    assert default.inhernet_plan.drop.dropped
    zero = inherit(teacher, InherConfig(budget=0.6, drop_blocks=0), calib=calib, progress=False)
    assert zero.inhernet_plan.drop is None and len(layer_stack(zero)[1]) == 4
    assert 0.98 * int(0.6 * n_params(teacher)) <= n_params(zero) <= int(0.6 * n_params(teacher))
    # not under other budgets, nor in the verification mode: a full-rank student is still the teacher
    full = inherit(teacher, InherConfig(rank="full"), calib=calib, progress=False)
    assert full.inhernet_plan.drop is None
    torch.testing.assert_close(full(ids).logits, teacher(ids).logits, atol=1e-4, rtol=1e-4)
    # plain SVD (no calibration), the published method and other families keep every block
    assert inherit(teacher, InherConfig(budget=0.4, init="svd"), progress=False).inhernet_plan.drop is None
    paper = inherit(teacher, InherConfig.paper(budget=0.4), calib=calib, progress=False)
    assert paper.inhernet_plan.drop is None and paper.inhernet_plan.config.drop_blocks == 0
    model, x = mlp()
    assert inherit(model, InherConfig(budget=0.5), calib=[x], progress=False).inhernet_plan.drop is None


def test_bench_rows_drop_as_their_recipe_says():
    """``inhernet`` drops the family's share of blocks, ``inhernet-paper`` (the method as published) none."""
    teacher, _, calib = _teacher()
    ctx = MethodContext(teacher, 0.4, experts=None, calib=calib)
    assert build_student("inhernet", ctx).inhernet_plan.drop.dropped
    paper = build_student("inhernet-paper", ctx)
    assert paper.inhernet_plan.drop is None and len(layer_stack(paper)[1]) == 4
    assert paper.inhernet_plan.config.experts == 3


def test_plan_predicts_what_inherit_builds_and_a_plan_rebuilds_it():
    teacher, ids, calib = _teacher()
    config = InherConfig(budget=0.6, drop_blocks=0.5)
    student = inherit(teacher, config, calib=calib, progress=False)
    dry = plan(teacher, config, calib)
    assert dry.drop.kept == student.inhernet_plan.drop.kept and dry.ranks() == student.inhernet_plan.ranks()
    assert dry.total_params == n_params(student)
    again = inherit(teacher, plan=student.inhernet_plan, calib=calib, progress=False)
    assert again.inhernet_plan.drop.kept == student.inhernet_plan.drop.kept
    torch.testing.assert_close(again(ids).logits, student(ids).logits)


def test_save_then_load_replays_the_dropped_blocks(tmp_path):
    teacher, ids, calib = _teacher()
    student = inherit(teacher, InherConfig(budget=0.6, drop_blocks=0.5), calib=calib, progress=False)
    save(student, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "inhernet.json").read_text())
    assert meta["drop"]["kept"] == student.inhernet_plan.drop.kept
    loaded = load(tmp_path / "m", base=llama_tiny()[0])
    assert len(layer_stack(loaded)[1]) == loaded.config.num_hidden_layers == len(meta["drop"]["kept"])
    assert torch.equal(loaded.eval()(ids).logits, student.eval()(ids).logits)
    # both know which teacher block each kept block was (what feature KD pairs them by)
    kept = tuple(meta["drop"]["kept"])
    assert getattr(student, KEPT_LAYERS) == getattr(loaded, KEPT_LAYERS) == ("model.layers", kept)
    save(loaded, tmp_path / "again")  # a loaded model saves its drop again
    assert json.loads((tmp_path / "again" / "inhernet.json").read_text())["drop"] == meta["drop"]


def test_a_failed_load_leaves_the_base_whole(tmp_path):
    teacher, _, calib = _teacher()
    student = inherit(teacher, InherConfig(budget=0.6, drop_blocks=0.5), calib=calib, progress=False)
    save(student, tmp_path / "m")
    path = tmp_path / "m" / "inhernet.json"
    meta = json.loads(path.read_text())
    meta["layers"]["no.such.layer"] = next(iter(meta["layers"].values()))
    path.write_text(json.dumps(meta))
    base = llama_tiny()[0]
    with pytest.raises(ValueError, match=r"no\.such\.layer"):
        load(tmp_path / "m", base=base)
    assert len(layer_stack(base)[1]) == base.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in layer_stack(base)[1]] == [0, 1, 2, 3]
    meta["drop"]["stack"] = "model.elsewhere"
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model\.elsewhere"):
        load(tmp_path / "m", base=base)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"drop_blocks": "half"}, TypeError, "drop_blocks must be a share"),
        ({"drop_blocks": 1.5}, ValueError, "drop_blocks=1.5 is not a share"),
        ({"drop_blocks": -0.1}, ValueError, "is not a share"),
        ({"drop_blocks": 0.5, "macs": 0.5}, ValueError, "works with budget= alone"),
        ({"drop_blocks": 0.5, "latency": 0.5}, ValueError, "works with budget= alone"),
        ({"drop_blocks": 0.5, "rank": 4}, ValueError, "works with budget= alone"),
        ({"drop_blocks": 0.5, "budget": 0.5, "prune": 0.2}, ValueError, "works with budget= alone"),
    ],
)
def test_config_errors_name_the_option(kwargs, error, match):
    with pytest.raises(error, match=match):
        InherConfig(**kwargs)


def test_inherit_errors_say_what_is_missing():
    teacher, _, _ = _teacher()
    with pytest.raises(ValueError, match="needs calib"):
        inherit(teacher, InherConfig(budget=0.6, drop_blocks=0.5), progress=False)
    model, x = mlp()
    with pytest.raises(ValueError, match=r"no stack of repeated layers.*drop_blocks=0"):
        inherit(model, InherConfig(budget=0.5, drop_blocks=0.5), calib=[x], progress=False)


class _Widening(torch.nn.Module):
    """A stack whose blocks change the width: no hidden state passes through them."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[1](self.blocks[0](x))


def test_blocks_that_change_the_width_name_the_block_and_the_way_out():
    model, x = _Widening().eval(), torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"drop_blocks=0\.5: block 0 .*transformer blocks; use drop_blocks=0$"):
        inherit(model, InherConfig(budget=0.5, drop_blocks=0.5), calib=[x], progress=False)


def test_config_round_trips_and_omits_the_field_at_its_default():
    assert "drop_blocks" not in InherConfig(budget=0.5).to_dict()
    d = InherConfig(budget=0.5, drop_blocks=0.5).to_dict()
    assert d["drop_blocks"] == 0.5 and InherConfig.from_dict(json.loads(json.dumps(d))).drop_blocks == 0.5


@pytest.mark.parametrize(
    ("share", "teacher", "target", "sizes", "want"),
    [
        (0.5, 100, 60, [10] * 8, 2),  # half of the 40 cut: 2 blocks of 10
        (0.0, 100, 60, [10] * 8, 0),
        (0.9, 100, 75, [10] * 8, 2),  # 0.9 * 25 -> 2 blocks, and 3 would reach the budget: rank must be left
        (0.99, 100, 10, [30, 30, 30], 1),  # two blocks kept: still a stack
        (0.9, 100, 10, [45, 45], 0),
        (0.5, 100, 100, [10] * 8, 0),  # nothing to cut
        (0.9, 1000, 789, [26] * 30, 7),  # SmolLM2 at 78.9%: 0.9 of the cut rounds to 7 blocks ...
        (1.0, 1000, 789, [26] * 30, 8),  # ... all of it to 8, which still leave rank to cut
        (1.0, 1000, 800, [26] * 30, 7),  # at 80% an 8th block would reach the budget
    ],
)
def test_blocks_to_drop(share, teacher, target, sizes, want):
    assert blocks_to_drop(share, teacher, target, sizes) == want


def test_compact_keeps_the_drop_through_save_and_load(tmp_path):
    from inhernet import compact

    teacher, ids, calib = _teacher()
    student = inherit(teacher, InherConfig(budget=0.6, drop_blocks=0.5), calib=calib, progress=False).eval()
    deployed = compact(student, calib=calib)
    assert deployed.inhernet_plan.drop.kept == student.inhernet_plan.drop.kept
    save(deployed, tmp_path / "c")
    loaded = load(tmp_path / "c", base=llama_tiny()[0]).eval()
    torch.testing.assert_close(loaded(ids).logits, deployed(ids).logits)


def test_a_plan_given_decides_the_blocks_whatever_the_config_says():
    teacher, ids, calib = _teacher()
    every = inherit(teacher, InherConfig(budget=0.6, drop_blocks=0), calib=calib, progress=False)
    again = inherit(teacher, InherConfig(budget=0.6, drop_blocks=0.5), plan=every.inhernet_plan, calib=calib,
                    progress=False)
    assert again.inhernet_plan.drop is None and len(layer_stack(again)[1]) == 4
    assert again.inhernet_plan.ranks() == every.inhernet_plan.ranks()
    torch.testing.assert_close(again(ids).logits, every(ids).logits)

