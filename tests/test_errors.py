"""Bad input fails early with ValueError/TypeError naming the argument or layer and what would work."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tiny_models as tm
from inhernet import InherConfig, evaluate, inherit, plan

CONFIG_CASES = [
    pytest.param(dict(budget=0.0), ValueError, r"budget=0.0 is not a fraction in \(0, 1\]", id="budget-zero"),
    pytest.param(dict(budget=-0.25), ValueError, r"budget=-0.25 is not a fraction", id="budget-negative"),
    pytest.param(dict(budget=1.5), ValueError, r"budget=1.5 is not a fraction", id="budget-above-one"),
    pytest.param(dict(budget=0), ValueError, "positive parameter count", id="budget-int-zero"),
    pytest.param(dict(budget=-5), ValueError, "positive parameter count", id="budget-int-negative"),
    pytest.param(dict(budget=math.nan), TypeError, "budget must be", id="budget-nan"),
    pytest.param(dict(budget="0.5"), TypeError, "budget must be", id="budget-str"),
    pytest.param(dict(budget=True), TypeError, "budget must be", id="budget-bool"),
    pytest.param(dict(budget=0.5, rank=4), ValueError, "budget and rank", id="budget-and-rank"),
    pytest.param(dict(rank=4, energy=0.9), ValueError, "rank and energy", id="rank-and-energy"),
    pytest.param(dict(rank=0), ValueError, "rank=0", id="rank-zero"),
    pytest.param(dict(rank=1.5), ValueError, "rank=1.5", id="rank-fraction-above-one"),
    pytest.param(dict(rank="half"), TypeError, "'full'", id="rank-str"),
    pytest.param(dict(energy=0.0), ValueError, "energy must be", id="energy-zero"),
    pytest.param(dict(energy=1.1), ValueError, "energy must be", id="energy-above-one"),
    pytest.param(dict(experts=0), ValueError, "experts must be an int >= 1", id="experts-zero"),
    pytest.param(dict(experts=-2), ValueError, "experts must be an int >= 1", id="experts-negative"),
    pytest.param(dict(experts=2.0), ValueError, "experts must be an int >= 1", id="experts-float"),
    pytest.param(dict(init="pca"), ValueError, "init must be one of", id="init-unknown"),
    pytest.param(dict(allocation="greedy"), ValueError, "allocation must be one of", id="allocation-unknown"),
    pytest.param(dict(min_rank=0), ValueError, "min_rank must be", id="min-rank-zero"),
    pytest.param(dict(expert_noise=-0.1), ValueError, "expert_noise must be", id="noise-negative"),
    pytest.param(dict(damping=math.inf), ValueError, "damping must be", id="damping-inf"),
    pytest.param(dict(exclude=[1]), TypeError, "exclude patterns must be strings", id="exclude-int"),
    pytest.param(dict(include=3), TypeError, "include must be", id="include-int"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), CONFIG_CASES)
def test_bad_config(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        InherConfig(**kwargs)


@pytest.mark.parametrize("run", ["plan", "inherit"])
def test_whiten_without_calib(run: str) -> None:
    model, _ = tm.mlp()
    cfg = InherConfig(budget=0.8, experts=1, init="whiten")  # energy allocation needs whitened spectra
    call = (lambda: plan(model, cfg)) if run == "plan" else (lambda: inherit(model, cfg, progress=False))
    with pytest.raises(ValueError, match="calib") as info:
        call()
    assert 'init="svd"' in str(info.value)  # and what would work instead


def test_empty_calib() -> None:
    model, _ = tm.mlp()
    with pytest.raises(ValueError, match="calib is empty"):
        inherit(model, InherConfig(rank=4, init="whiten"), calib=[], progress=False)
    with pytest.raises(ValueError, match="calib is empty"):
        inherit(model, InherConfig(rank=4, init="whiten"), calib=iter(()), progress=False)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("run", ["plan", "inherit"])
def test_non_finite_teacher_weights_name_the_layer(run: str, bad: float) -> None:
    model, _ = tm.mlp()
    with torch.no_grad():
        model[2].weight[3, 1] = bad
    cfg = InherConfig(rank="full", init="svd")
    with pytest.raises(ValueError, match=r"layer '2' has NaN or infinite weights"):
        plan(model, cfg) if run == "plan" else inherit(model, cfg, progress=False)


def test_non_finite_weights_of_an_excluded_layer_are_fine() -> None:
    model, _ = tm.mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = math.nan
    p = plan(model, InherConfig(rank="full", exclude=("2",)))
    assert "2" not in p.ranks()


def test_integer_weights_name_the_layer() -> None:
    model, _ = tm.mlp()
    model[2].weight = nn.Parameter(torch.ones(24, 24, dtype=torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match=r"layer '2' has torch.int32 weights"):
        plan(model, InherConfig(rank="full"))


@pytest.mark.parametrize(
    ("model", "cfg"),
    [
        pytest.param(
            nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), InherConfig(rank="full"), id="no-supported-layer"
        ),
        pytest.param(
            nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)), InherConfig(rank="full"), id="only-depthwise"
        ),
        pytest.param(
            nn.Sequential(nn.Linear(4, 4)), InherConfig(rank="full", exclude=("0",)), id="all-excluded"
        ),
        pytest.param(
            nn.Sequential(nn.Linear(4, 4)),
            InherConfig(include=("nothing*",), init="svd"),
            id="include-nothing",
        ),
    ],
)
def test_nothing_to_factorise(model: nn.Module, cfg: InherConfig) -> None:
    with pytest.raises(ValueError, match="nothing to factorise"):
        plan(model, cfg)
    with pytest.raises(ValueError, match="nothing to factorise"):
        inherit(model, InherConfig(**{**cfg.to_dict(), "init": "svd"}), progress=False)


def test_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        plan("resnet18", InherConfig())


def test_plan_for_another_model_is_refused() -> None:
    mlp, _ = tm.mlp()
    other = nn.Sequential(nn.Linear(12, 24))
    p = plan(mlp, InherConfig(rank=2, experts=1, init="svd"))
    with pytest.raises(ValueError, match="cannot"):
        inherit(other, InherConfig(rank=2, experts=1, init="svd"), plan=p, progress=False)


def test_evaluate_bad_input() -> None:
    model, x = tm.mlp()
    with pytest.raises(ValueError, match="metric must be one of"):
        evaluate(model, [(x, torch.zeros(4, dtype=torch.long))], metric="bleu")
    with pytest.raises(ValueError, match="labelled batches"):
        evaluate(model, [x])
    with pytest.raises(ValueError, match="loader is empty"):
        evaluate(model, [])
