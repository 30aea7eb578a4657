"""Budgets are met: total <= target and within 2% of it, by plan() and by counting the model.

resnet18 and a small BERT (big enough that 10% is reachable), both allocations, fractional and
absolute budgets. The plain SVD of each teacher layer is memoised for the module (it depends on the
weights only), so the many plans cost one decomposition per model.
"""

from __future__ import annotations

import importlib
import re

import pytest
import torch

import tiny_models as tm
from inhernet import InherBlock, InherConfig, inherit, plan
from inhernet.experimental import ExperimentalConfig

plan_module = importlib.import_module("inhernet.spectra")  # where the layers are decomposed

MODELS = {"resnet18": tm.resnet18, "bert": tm.bert_small}


@pytest.fixture(scope="module", autouse=True)
def memoised_svd():
    original = plan_module.factorize
    cache: dict = {}

    def factorize(w: torch.Tensor, cov=None, damping: float = 1e-4):
        if cov is not None:
            return original(w, cov, damping)
        key = (w.data_ptr(), tuple(w.shape), w.stride(), w.dtype, w._version)
        if key not in cache:
            cache[key] = original(w, cov, damping)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_module, "factorize", factorize)
        yield


@pytest.fixture(scope="module")
def teachers() -> dict:
    return {name: factory()[0] for name, factory in MODELS.items()}


def check(teacher, cfg: InherConfig, target: int) -> None:
    p = plan(teacher, cfg)
    assert p.teacher_params == tm.n_params(teacher)
    assert p.target_params == target
    assert p.total_params <= target
    assert p.total_params >= 0.98 * target
    # The table adds up: untouched parameters + each row's "after" = the total.
    covered = sum(r.params_before for r in p.layers)
    assert p.total_params == p.teacher_params - covered + sum(r.params_after for r in p.layers)
    for r in p.factorised:
        assert 1 <= r.rank <= r.max_rank and r.params_after < r.params_before

    student = inherit(teacher, cfg, progress=False)
    assert tm.n_params(student) == p.total_params
    assert student.inhernet_plan.ranks() == p.ranks()
    built = {n: m.rank for n, m in student.named_modules() if isinstance(m, InherBlock)}
    assert built == p.ranks()


@pytest.mark.parametrize("allocation", ["energy", "uniform"])
@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("name", list(MODELS))
def test_fraction_budget_is_met(teachers, name: str, budget: float, allocation: str) -> None:
    teacher = teachers[name]
    cfg = ExperimentalConfig(budget=budget, experts=3, init="svd", allocation=allocation)
    check(teacher, cfg, int(budget * tm.n_params(teacher)))


@pytest.mark.parametrize("allocation", ["energy", "uniform"])
@pytest.mark.parametrize(("name", "budget"), [("resnet18", 2_000_000), ("bert", 300_000)])
def test_absolute_budget_is_met(teachers, name: str, budget: int, allocation: str) -> None:
    cfg = ExperimentalConfig(budget=budget, experts=2, init="svd", allocation=allocation)
    check(teachers[name], cfg, budget)


@pytest.mark.parametrize("name", list(MODELS))
def test_unreachable_budget_names_the_smallest_reachable(teachers, name: str) -> None:
    teacher = teachers[name]
    with pytest.raises(ValueError, match="unreachable") as info:
        plan(teacher, InherConfig(budget=0.001, init="svd"))
    found = re.search(r"smallest reachable is ([\d,]+)", str(info.value))
    assert found, str(info.value)
    smallest = int(found.group(1).replace(",", ""))
    # That number is exactly the edge: reachable, and one parameter less is not.
    p = plan(teacher, InherConfig(budget=smallest, init="svd"))
    assert p.total_params == smallest
    assert all(r.rank == 1 for r in p.factorised)
    with pytest.raises(ValueError, match="unreachable"):
        plan(teacher, InherConfig(budget=smallest - 1, init="svd"))


def test_absolute_budget_above_teacher_is_refused(teachers) -> None:
    teacher = teachers["bert"]
    with pytest.raises(ValueError, match="exceeds the teacher"):
        plan(teacher, InherConfig(budget=tm.n_params(teacher) + 1, init="svd"))


def test_more_experts_cost_more_per_rank(teachers) -> None:
    """At one budget, more experts leave less rank: the allocation pays for every expert."""
    teacher = teachers["bert"]
    ranks = {
        h: sum(plan(teacher, InherConfig(budget=0.25, experts=h, init="svd")).ranks().values())
        for h in (1, 4)
    }
    assert ranks[4] < ranks[1]
