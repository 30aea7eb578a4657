"""plan(): no mutation, every parameter-owning module listed, dense layers with a reason, patterns."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import tiny_models as tm
from inhernet import InherBlock, InherConfig, inherit, plan
from inhernet.experimental import ExperimentalConfig

PLAN_CASES = {
    "mlp-budget-whiten": (tm.mlp, dict(budget=0.6, experts=1, init="whiten")),
    "cnn-rank-full": (tm.cnn, dict(rank="full")),
    "conv1d-energy-whiten": (tm.conv1d_net, dict(energy=0.5, experts=1, init="whiten")),
    "bert-budget-energy": (tm.bert_tiny, dict(budget=0.7, experts=1, init="whiten")),
    "gpt2-uniform": (tm.gpt2_tiny, dict(budget=0.8, experts=1, init="svd", allocation="uniform")),
}


def _fingerprint(model: nn.Module) -> tuple:
    return (
        [(n, type(m)) for n, m in model.named_modules()],
        [(n, p.requires_grad) for n, p in model.named_parameters()],
        model.training,
    )


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_plan_does_not_mutate(case: str, training: bool) -> None:
    factory, kwargs = PLAN_CASES[case]
    model, batch = factory()
    model.train(training)
    state, shape = tm.state_copy(model), _fingerprint(model)
    p = plan(model, config_of(**kwargs), calib=[batch])
    assert p.factorised
    assert tm.same_state(state, model.state_dict())
    assert _fingerprint(model) == shape
    assert not any(isinstance(m, InherBlock) for m in model.modules())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    # The plan is what inherit() builds.
    student = inherit(model, config_of(**kwargs), calib=[batch], progress=False)
    assert student.inhernet_plan.to_dict() == p.to_dict()
    assert tm.n_params(student) == p.total_params


def test_plan_table_and_dict() -> None:
    model, _ = tm.bert_tiny()
    p = plan(model, InherConfig(rank=4, init="svd", experts=1))
    text = str(p)
    assert text == p.to_markdown()
    for row in p.layers:
        assert f"| {row.name or '(root)'} |" in text
    d = json.loads(json.dumps(p.to_dict()))
    assert d["total_params"] == p.total_params and len(d["layers"]) == len(p.layers)
    # Every module that owns parameters has exactly one row.
    owners = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    assert sorted(r.name for r in p.layers) == sorted(owners)


class Mixed(nn.Module):
    """Supported, unsupported and kept-dense layers side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 32, 1, groups=4)
        self.pointwise = nn.Conv2d(32, 32, 1)
        self.norm = nn.LayerNorm(32)
        self.custom = tm.RawParamNet()
        self.proj = nn.Linear(32, 8)
        self.twice = nn.Linear(8, 8)  # called twice, registered once: factorisable
        self.emb_max_norm = nn.Embedding(10, 8, max_norm=1.0)
        self.emb_sparse = nn.Embedding(10, 8, sparse=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(self.grouped(self.depthwise(self.bn(self.stem(x)))))
        x = self.proj(self.norm(x.mean((2, 3))))
        return self.twice(self.twice(x)) + self.custom(x).sum(-1, keepdim=True)


DENSE = {
    "bn": ("BatchNorm2d", "unsupported"),
    "depthwise": ("conv2d", "depthwise"),
    "grouped": ("conv2d", "grouped"),
    "norm": ("LayerNorm", "unsupported"),
    "custom": ("RawParamNet", "unsupported"),  # owns the raw nn.Parameter `scale`
    "custom.norm": ("LayerNorm", "unsupported"),
    "emb_max_norm": ("embedding", "max_norm"),
    "emb_sparse": ("embedding", "sparse"),
}


@pytest.mark.parametrize(("name", "expected"), list(DENSE.items()))
def test_unsupported_and_special_layers_stay_dense_with_a_reason(
    name: str, expected: tuple[str, str]
) -> None:
    model = Mixed().eval()
    rows = {r.name: r for r in plan(model, InherConfig(rank="full")).layers}
    kind, words = expected
    row = rows[name]
    assert row.kind == kind
    assert row.rank is None and row.params_after == row.params_before
    assert words in row.reason


def test_mixed_model_full_rank_factorises_the_rest_and_reproduces() -> None:
    model = Mixed().eval()
    x = torch.randn(2, 3, 6, 6)
    student = inherit(model, InherConfig(rank="full", init="whiten"), calib=[x], progress=False).eval()
    p = student.inhernet_plan
    assert set(p.ranks()) == {"stem", "pointwise", "proj", "twice", "custom.fc1", "custom.fc2"}
    for name in DENSE:
        assert type(student.get_submodule(name)) is type(model.get_submodule(name))
    assert tm.rel_err(tm.run(student, x), tm.run(model, x)) <= 1e-4


def test_shared_module_instance_stays_dense() -> None:
    shared = nn.Linear(8, 8)
    model = nn.Sequential(nn.Linear(4, 8), shared, nn.ReLU(), shared)
    rows = {r.name: r for r in plan(model, InherConfig(rank="full")).layers}
    assert rows["1"].rank is None and "shared" in rows["1"].reason
    assert rows["0"].rank is not None


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 16)
        self.classifier = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        self.classifier_extra = nn.Linear(16, 4)  # shares the prefix, but is not classifier.*

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.classifier(h) + self.classifier_extra(h)


PATTERN_CASES = [
    pytest.param(dict(exclude="classifier"), {"body", "classifier_extra"}, id="exclude-str"),
    pytest.param(dict(exclude=("classifier",)), {"body", "classifier_extra"}, id="exclude-descendants"),
    pytest.param(
        dict(exclude=("classifier.2",)), {"body", "classifier.0", "classifier_extra"}, id="exclude-one"
    ),
    pytest.param(dict(exclude=("classifier*",)), {"body"}, id="exclude-glob"),
    pytest.param(dict(include=("classifier",)), {"classifier.0", "classifier.2"}, id="include-descendants"),
    pytest.param(
        dict(include=("body", "classifier.*")), {"body", "classifier.0", "classifier.2"}, id="include-two"
    ),
    pytest.param(
        dict(include=("classifier",), exclude=("classifier.0",)), {"classifier.2"}, id="include-exclude"
    ),
]


@pytest.mark.parametrize(("patterns", "factorised"), PATTERN_CASES)
def test_include_exclude_patterns(patterns: dict, factorised: set[str]) -> None:
    p = plan(Head(), InherConfig(rank="full", **patterns))
    assert set(p.ranks()) == factorised
    for row in p.layers:
        if row.name not in factorised:
            assert row.rank is None
            assert "pattern" in row.reason


def test_exclude_reason_names_the_pattern() -> None:
    model, _ = tm.bert_tiny()
    rows = {r.name: r for r in plan(model, InherConfig(rank="full", exclude=("classifier",))).layers}
    assert rows["classifier"].rank is None
    assert rows["classifier"].reason == "excluded by pattern 'classifier'"
    assert rows["bert.pooler.dense"].rank is not None


def _wide_mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), torch.randn(8, 64)


def test_a_budget_that_cuts_wide_layers_to_rank_two_warns_and_suggests_pruning():
    model, x = _wide_mlp()
    config = InherConfig(budget=0.08, experts=1, init="svd")
    with pytest.warns(UserWarning, match=r"cuts \d+ layer\(s\) to rank <= 2 \(e\.g\. \d: rank [12] of \d+\).*prune='auto'"):
        planned = plan(model, config)
    assert any(r.factorised and r.rank <= 2 and r.max_rank >= 32 for r in planned.layers)
    with pytest.warns(UserWarning, match="to rank <= 2"):
        inherit(model, config, calib=[x], progress=False)


@pytest.mark.parametrize("config", [
    InherConfig(budget=0.6, experts=1, init="svd"),  # ranks well above 2
    InherConfig(rank=1, experts=1, init="svd"),  # the user chose the rank
    InherConfig(budget=0.08, experts=1, init="svd", prune=0.3),  # channels pruned first
], ids=["wide-ranks", "rank-given", "pruned"])
def test_no_bottleneck_warning_where_ranks_stay_wide_or_are_chosen(config):
    import warnings

    model, x = _wide_mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan(model, config, calib=[x])
    assert not [w for w in caught if "rank <=" in str(w.message)]


def config_of(**kwargs: object) -> InherConfig:
    """An InherConfig, or an ExperimentalConfig for an ablation's allocation (``"uniform"``)."""
    return (ExperimentalConfig if kwargs.get("allocation") == "uniform" else InherConfig)(**kwargs)


@pytest.mark.parametrize("calibration", ["one-pass", "sequential"])
def test_build_rebuilds_the_student_of_a_plan(calibration: str) -> None:
    """build(teacher, plan, calib) is inherit's student again: the plan alone decides the structure, and the
    same calibration gives the same factors."""
    from inhernet import build

    teacher, batch = tm.llama_tiny()
    calib = [batch, batch.flip(0)]
    cfg = InherConfig(budget=0.7, experts=1, calibration=calibration, drop_blocks=0)
    student = inherit(teacher, cfg, calib=calib, progress=False)
    again = build(teacher, student.inhernet_plan, calib, progress=False)
    assert again.inhernet_plan is student.inhernet_plan
    assert torch.equal(tm.run(again.eval(), batch), tm.run(student.eval(), batch))
