"""MAC budgets (``InherConfig(macs=...)``): ranks priced in multiply-accumulates on an example input.

The example input is the first calib batch, whole; MACs are ``count_macs`` on it. The plan's MAC
total is checked against counting the inherited model, so the cost model must match PyTorch's FLOP
counter exactly. Models are tiny and plans cheap (``init="svd"`` where whitening is not the point).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import tiny_models as tm
from inhernet import InherBlock, InherConfig, count_macs, inherit, plan
from inhernet.experimental import ExperimentalConfig

LARGE, SMALL = "2", "5"  # the convs on the 32x32 and on the 4x4 feature map


@tm._seeded
def two_maps() -> tuple[nn.Module, torch.Tensor]:
    """A conv on a large map (32x32) and one on a small map (4x4), with the small one twice the params."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),  # LARGE: 4,608 weights, 32x32 outputs
        nn.ReLU(),
        nn.MaxPool2d(8),
        nn.Conv2d(32, 64, 3, padding=1),  # SMALL: 18,432 weights, 4x4 outputs
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 16, 10),
    )
    return model, torch.randn(4, 3, 32, 32)


@tm._seeded
def bert_64() -> tuple[nn.Module, dict]:
    model, _ = tm._bert(hidden=64, layers=2, heads=2, vocab=200, intermediate=256, positions=32)
    ids = torch.randint(1, 200, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    return model, {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2])}


def check_macs(teacher: nn.Module, batch, cfg: InherConfig, target: int) -> nn.Module:
    """The plan and the built model agree, and land at or under ``target`` MACs, within 2% of it."""
    p = plan(teacher, cfg, calib=[batch])
    assert p.teacher_macs == count_macs(teacher, batch)
    assert p.target_macs == target and p.target_params is None
    student = inherit(teacher, cfg, calib=[batch], progress=False)
    assert student.inhernet_plan.to_dict() == p.to_dict()
    macs = count_macs(student, batch)
    assert macs == p.total_macs
    assert 0.98 * target <= macs <= target
    assert tm.n_params(student) == p.total_params
    return student


@pytest.mark.parametrize(
    ("allocation", "init"), [("energy", "whiten"), ("energy", "svd"), ("uniform", "svd")]
)
def test_fraction_of_macs_is_met(allocation: str, init: str) -> None:
    teacher, x = two_maps()
    cfg = ExperimentalConfig(macs=0.5, init=init, allocation=allocation)
    student = check_macs(teacher, x, cfg, int(0.5 * count_macs(teacher, x)))
    assert any(isinstance(m, InherBlock) for m in student.modules())
    p = student.inhernet_plan
    summary = p.summary()
    assert f"{p.teacher_macs:,} -> {p.total_macs:,} MACs" in summary
    assert f"target {p.target_macs:,}" in summary
    d = json.loads(json.dumps(p.to_dict()))
    assert [d[k] for k in ("teacher_macs", "target_macs", "total_macs")] == [
        p.teacher_macs, p.target_macs, p.total_macs
    ]


def test_absolute_mac_count_is_met() -> None:
    teacher, x = two_maps()
    target = 8_000_000  # of about 21.9M
    check_macs(teacher, x, InherConfig(macs=target, init="svd", experts=3), target)


def ratio(p, name: str) -> float:
    row = next(r for r in p.layers if r.name == name)
    return 1.0 if row.rank is None else row.rank / row.max_rank


def test_large_map_conv_gets_less_rank_under_macs_than_under_params() -> None:
    """A rank of the 32x32 conv costs 64x the MACs of one of the 4x4 conv: MACs cut it, params spare it."""
    teacher, x = two_maps()
    by_macs = plan(teacher, InherConfig(macs=0.5, init="svd"), calib=[x])
    by_params = plan(teacher, InherConfig(budget=0.5, init="svd"))
    assert by_macs.ranks().get(LARGE) is not None
    assert ratio(by_macs, LARGE) / ratio(by_macs, SMALL) < ratio(by_params, LARGE) / ratio(by_params, SMALL)
    assert ratio(by_macs, LARGE) < ratio(by_params, LARGE)


def test_unreachable_mac_budget_names_the_smallest_reachable() -> None:
    teacher, x = two_maps()
    with pytest.raises(ValueError, match=r"MAC budget .* is unreachable") as info:
        plan(teacher, InherConfig(macs=0.001, init="svd"), calib=[x])
    found = re.search(r"smallest reachable is ([\d,]+)", str(info.value))
    assert found, str(info.value)
    smallest = int(found.group(1).replace(",", ""))
    # That number is exactly the edge: reachable (and what the model counts), one MAC less is not.
    cfg = InherConfig(macs=smallest, init="svd")
    p = plan(teacher, cfg, calib=[x])
    assert p.total_macs == smallest
    assert all(r.rank == 1 for r in p.factorised)
    assert count_macs(inherit(teacher, cfg, calib=[x], progress=False), x) == smallest
    with pytest.raises(ValueError, match="unreachable"):
        plan(teacher, InherConfig(macs=smallest - 1, init="svd"), calib=[x])


def test_mac_count_above_teacher_is_refused() -> None:
    teacher, x = two_maps()
    with pytest.raises(ValueError, match="exceeds the teacher's"):
        plan(teacher, InherConfig(macs=count_macs(teacher, x) + 1, init="svd"), calib=[x])


@pytest.mark.parametrize("run", ["plan", "inherit"])
def test_mac_budget_without_calib_asks_for_an_example(run: str) -> None:
    teacher, _ = two_maps()
    cfg = InherConfig(macs=0.5, init="svd")
    call = (lambda: plan(teacher, cfg)) if run == "plan" else (lambda: inherit(teacher, cfg, progress=False))
    with pytest.raises(ValueError, match=r"needs an example input: pass calib="):
        call()
    with pytest.raises(ValueError, match="calib is empty"):
        plan(teacher, cfg, calib=[])


def test_one_shot_calib_keeps_its_first_batch_for_whitening() -> None:
    teacher, x = two_maps()
    batches = [x, torch.randn(3, 3, 32, 32)]
    cfg = InherConfig(macs=0.5, init="whiten")
    from_list = inherit(teacher, cfg, calib=batches, progress=False)
    from_iter = inherit(teacher, cfg, calib=iter(batches), progress=False)
    assert from_iter.inhernet_plan.to_dict() == from_list.inhernet_plan.to_dict()
    assert tm.same_state(from_list.state_dict(), from_iter.state_dict())


COARSE = pytest.mark.filterwarnings("ignore:the plan reaches:UserWarning")  # tiny layers, big rank steps


@COARSE
@pytest.mark.parametrize("experts", [1, 3])
@pytest.mark.parametrize("factory", [tm.mlp, tm.cnn, tm.conv1d_net, tm.gpt2_tiny, tm.embed_net, tm.vit_tiny])
def test_cost_model_matches_the_flop_counter(factory, experts: int) -> None:
    """Linear, conv1d/2d, HF Conv1D, embeddings, a ViT; with and without a gate: the plan counts exactly."""
    teacher, batch = factory()
    cfg = InherConfig(macs=0.8, experts=experts, init="svd")
    p = plan(teacher, cfg, calib=[batch])
    student = inherit(teacher, cfg, calib=[batch], progress=False)
    assert p.factorised
    assert count_macs(student, batch) == p.total_macs <= p.target_macs


@COARSE
def test_embeddings_and_unused_layers_stay_dense_under_macs() -> None:
    teacher, ids = tm.embed_net()
    rows = {r.name: r for r in plan(teacher, InherConfig(macs=0.9, init="svd"), calib=[ids]).layers}
    assert rows["emb"].rank is None and "no rank saves MACs" in rows["emb"].reason

    cfg = InherConfig(macs=0.5, init="svd")
    rows = {r.name: r for r in plan(tm.WithUnusedLayer(32, 32), cfg, calib=[torch.randn(4, 32)]).layers}
    assert rows["used"].rank is not None
    assert rows["spare"].rank is None and "did not run on the example input" in rows["spare"].reason


def test_tiny_bert_meets_its_mac_budget_on_a_dict_batch() -> None:
    teacher, batch = bert_64()
    student = check_macs(teacher, batch, InherConfig(macs=0.6), int(0.6 * count_macs(teacher, batch)))
    rows = {r.name: r for r in student.inhernet_plan.layers}
    assert rows["bert.embeddings.word_embeddings"].rank is None  # a lookup: no MACs to save
    assert sum(isinstance(m, InherBlock) for m in student.modules()) >= 6


CONFIG_CASES = [
    pytest.param(dict(budget=0.5, macs=0.5), ValueError, "budget and macs", id="budget-and-macs"),
    pytest.param(dict(energy=0.9, macs=0.5), ValueError, "energy and macs", id="energy-and-macs"),
    pytest.param(dict(rank=4, macs=100), ValueError, "rank and macs", id="rank-and-macs"),
    pytest.param(dict(macs=0.0), ValueError, r"macs=0.0 is not a fraction in \(0, 1\]", id="macs-zero"),
    pytest.param(dict(macs=-0.5), ValueError, r"macs=-0.5 is not a fraction", id="macs-negative"),
    pytest.param(dict(macs=1.5), ValueError, r"macs=1.5 is not a fraction", id="macs-above-one"),
    pytest.param(dict(macs=0), ValueError, "positive MAC count", id="macs-int-zero"),
    pytest.param(dict(macs=-7), ValueError, "positive MAC count", id="macs-int-negative"),
    pytest.param(dict(macs=float("nan")), TypeError, "macs must be", id="macs-nan"),
    pytest.param(dict(macs="half"), TypeError, "macs must be", id="macs-str"),
    pytest.param(dict(macs=True), TypeError, "macs must be", id="macs-bool"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), CONFIG_CASES)
def test_bad_macs_config(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        InherConfig(**kwargs)


def test_macs_config_round_trips_without_a_default_budget() -> None:
    cfg = InherConfig(macs=0.5)
    assert cfg.budget is None
    again = InherConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert InherConfig.from_dict({"experts": 2}).budget == 0.25
