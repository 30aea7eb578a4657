"""Bad input fails early with ValueError/TypeError naming the argument or layer and what would work."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import tiny_models as tm
from inhernet import InherConfig, evaluate, inherit, plan
from inhernet.config import MOVED
from inhernet.experimental import ExperimentalConfig, ExperimentalDistillConfig

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
    pytest.param(dict(seed=-1), ValueError, r"seed=-1 is out of range: give an int in \[0, 4294967295\]", id="seed-negative"),
    pytest.param(dict(seed=2**32), ValueError, "seed=4294967296 is out of range", id="seed-too-large"),
    pytest.param(dict(seed=1.5), TypeError, "seed must be an int", id="seed-float"),
    pytest.param(dict(seed="0"), TypeError, "seed must be an int", id="seed-str"),
    pytest.param(dict(seed=True), TypeError, "seed must be an int", id="seed-bool"),
    pytest.param(dict(experts=np.bool_(True)), ValueError, "experts must be an int", id="experts-numpy-bool"),
    pytest.param(dict(seed=np.int64(-3)), ValueError, "seed=-3 is out of range", id="seed-numpy-negative"),
]


def config_of(**kwargs: object) -> InherConfig:
    """An InherConfig, or an ExperimentalConfig where ``kwargs`` name an ablation knob."""
    return (ExperimentalConfig if set(kwargs) & set(MOVED) else InherConfig)(**kwargs)


@pytest.mark.parametrize(("kwargs", "error", "message"), CONFIG_CASES)
def test_bad_config(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        config_of(**kwargs)


@pytest.mark.parametrize("knob", MOVED)
def test_an_ablation_knob_says_where_it_went(knob: str) -> None:
    """InherConfig refuses the ablation knobs by name and points at inhernet.experimental, which takes them."""
    value = getattr(ExperimentalConfig(), knob)
    with pytest.raises(TypeError, match=rf"{knob}=.*inhernet\.experimental\.ExperimentalConfig"):
        InherConfig(**{knob: value})
    assert getattr(ExperimentalConfig(**{knob: value}), knob) == value == getattr(InherConfig(), knob)


@pytest.mark.parametrize("field, value", [("init", "random"), ("allocation", "uniform"),
                                          ("allocation", "loss-by-type")])
def test_an_ablation_value_says_where_it_went_and_loads_back(field: str, value: str) -> None:
    """An ablation's value is refused by InherConfig with where it went; a saved config that names one loads
    as the ExperimentalConfig it was."""
    with pytest.raises(ValueError, match=r"ablation: use inhernet\.experimental\.ExperimentalConfig"):
        InherConfig(**{field: value})
    saved = ExperimentalConfig(**{field: value}).to_dict()
    loaded = InherConfig.from_dict(saved)
    assert type(loaded) is ExperimentalConfig and getattr(loaded, field) == value
    assert type(InherConfig.from_dict(InherConfig().to_dict())) is InherConfig


def test_the_removed_corrected_calibration_names_the_accepted_ones() -> None:
    """``calibration="sequential-corrected"`` is gone (an ablation that lost): refused with the values accepted."""
    message = r"calibration must be one of \('one-pass', 'sequential'\).*got 'sequential-corrected'"
    for make in (InherConfig, ExperimentalConfig, lambda **kw: InherConfig.from_dict(kw)):
        with pytest.raises(ValueError, match=message):
            make(calibration="sequential-corrected")


NUMPY_CONFIGS = [
    pytest.param(dict(budget=np.int64(5000), experts=np.int32(2), seed=np.uint32(7), min_rank=np.int16(2)),
                 dict(budget=5000, experts=2, seed=7, min_rank=2), id="ints"),
    pytest.param(dict(budget=np.float32(0.5), min_rank_ratio=np.float64(0.25), expert_noise=np.float32(0.5)),
                 dict(budget=0.5, min_rank_ratio=0.25, expert_noise=0.5), id="floats"),
    pytest.param(dict(rank=np.int64(4)), dict(rank=4), id="rank-int"),
    pytest.param(dict(rank=np.float32(0.5)), dict(rank=0.5), id="rank-fraction"),
    pytest.param(dict(macs=np.int64(10**6)), dict(macs=10**6), id="macs"),
    pytest.param(dict(energy=np.float64(0.9)), dict(energy=0.9), id="energy"),
    pytest.param(dict(budgets={"a*": np.float32(0.5), "b*": np.int64(300)}), dict(budgets={"a*": 0.5, "b*": 300}),
                 id="budgets"),
]


@pytest.mark.parametrize(("kwargs", "expected"), NUMPY_CONFIGS)
def test_numpy_numbers_are_accepted_as_python_numbers(kwargs: dict, expected: dict) -> None:
    import json

    cfg = config_of(**kwargs)
    for key, value in expected.items():
        got = getattr(cfg, key)
        assert got == value and type(got) is type(value), (key, got)
        if isinstance(value, dict):
            assert all(type(got[k]) is type(v) for k, v in value.items())
    assert InherConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # JSON-serialisable


def test_distill_config_takes_numpy_numbers_and_checks_its_seed() -> None:
    from inhernet import DistillConfig

    cfg = ExperimentalDistillConfig(steps=np.int64(10), lr=np.float32(1e-3), warmup_steps=np.int32(2), seed=np.int64(3),
                        temperature=np.float64(2.0), alpha=np.float32(0.5), val_every=np.int64(5),
                        checkpoint_every=np.int8(0), num_nodes=np.int64(1), step_milestones=[np.float32(0.5)],
                        devices=np.int64(1))
    assert (cfg.steps, cfg.seed, cfg.warmup_steps, cfg.val_every, cfg.devices) == (10, 3, 2, 5, 1)
    assert all(type(v) is int for v in (cfg.steps, cfg.seed, cfg.warmup_steps, cfg.val_every, cfg.devices))
    assert type(cfg.lr) is float and cfg.step_milestones == (0.5,) and type(cfg.step_milestones[0]) is float
    with pytest.raises(ValueError, match=r"DistillConfig.seed=-1 is out of range"):
        DistillConfig(seed=-1)
    with pytest.raises(TypeError, match=r"DistillConfig.seed must be an int"):
        DistillConfig(seed=0.5)


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
