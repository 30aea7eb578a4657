"""The gate variants that lost every measurement are gone (top-1 routing, per-position conv gates, a gate
learning rate; benchmarks/results/experts-pay-mnist-cnn-0.1*.md): the paper's softmax gate is the only one.

Invariants: each config refuses a removed knob by name with a TypeError that says it was removed and why; a
saved student whose layer specs record the paper's gate options (older versions wrote ``routing`` and
``gate_pool``) still loads and computes as saved, and one that records a removed variant is refused with the
layer named.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import tiny_models as tm
from inhernet import InherConfig, inherit, load, save
from inhernet.distillation import DistillConfig
from inhernet.experimental import ExperimentalConfig, ExperimentalDistillConfig
from inhernet.layers import InherBlock
from inhernet.serialization import CONFIG_NAME

REMOVED = [
    (InherConfig, "routing", "top1", "top-1 routing was removed"),
    (ExperimentalConfig, "routing", "soft", "top-1 routing was removed"),
    (InherConfig, "gate_pool", "mean", "the per-position conv gate was removed"),
    (ExperimentalConfig, "gate_pool", "position", "the per-position conv gate was removed"),
    (DistillConfig, "gate_lr_scale", 1.0, "it was removed"),
    (ExperimentalDistillConfig, "gate_lr_scale", 30.0, "it was removed"),
]


@pytest.mark.parametrize(("config", "knob", "value", "what"), REMOVED)
def test_a_removed_knob_is_refused_by_name_with_why(config: type, knob: str, value: object, what: str) -> None:
    with pytest.raises(TypeError, match=rf"^{config.__name__} has no '{knob}': {what} in inhernet 0\.1\.0: .*"
                                        r"\(benchmarks/results/experts-pay-mnist-cnn-0\.1\*\.md\)$") as err:
        config(**{knob: value})
    assert "\n" not in str(err.value)
    assert not hasattr(config(), knob)


def saved_student(tmp_path):
    """A gated CNN student with distinct experts and input-dependent gates, saved; its teacher and output."""
    teacher, batch = tm.cnn()
    student = inherit_gated(teacher)
    path = save(student, tmp_path / "m")
    return path, teacher, batch, tm.run(student.eval(), batch)


def inherit_gated(teacher: torch.nn.Module) -> torch.nn.Module:
    student = inherit(teacher, ExperimentalConfig(rank=0.5, experts=3, init="svd"), progress=False)
    g = torch.Generator().manual_seed(0)
    for b in student.modules():
        if isinstance(b, InherBlock):
            b.gate.weight.data.normal_(generator=g)
            b.up.weight.data.add_(0.1 * torch.randn(b.up.weight.shape, generator=g))
    return student


def edit_specs(path, **options: str) -> str:
    """Add ``options`` to every layer spec of the saved ``inhernet.json`` (as older versions wrote them)."""
    meta = json.loads((path / CONFIG_NAME).read_text())
    assert meta["layers"] and all(set(spec) == {"rank", "experts", "source"} for spec in meta["layers"].values())
    for spec in meta["layers"].values():
        spec.update(options)
    meta["config"].update({"routing": "soft", "gate_pool": "mean"})  # an older ExperimentalConfig's record
    (path / CONFIG_NAME).write_text(json.dumps(meta))
    return next(iter(meta["layers"]))


def test_an_older_save_with_the_papers_gate_options_loads_as_saved(tmp_path) -> None:
    path, teacher, batch, want = saved_student(tmp_path)
    edit_specs(path, routing="soft", gate_pool="mean")
    loaded = load(path, copy.deepcopy(teacher)).eval()
    # The config's routing / gate_pool are the defaults: no ablation, an InherConfig as before.
    assert type(loaded.inhernet_config) is InherConfig and loaded.inhernet_config.experts == 3
    assert tm.rel_err(tm.run(loaded, batch), want) <= 1e-6


@pytest.mark.parametrize(("options", "message"), [
    ({"routing": "top1"}, r"routing='top1', only 'soft' loads: top-1 routing was removed in inhernet 0\.1\.0"),
    ({"gate_pool": "position"},
     r"gate_pool='position', only 'mean' loads: the per-position conv gate was removed in inhernet 0\.1\.0"),
])
def test_an_older_save_with_a_removed_gate_is_refused_naming_the_layer(tmp_path, options, message) -> None:
    path, teacher, _, _ = saved_student(tmp_path)
    layer = edit_specs(path, **options)
    base = copy.deepcopy(teacher)
    with pytest.raises(ValueError, match=rf"{CONFIG_NAME}: layer '{layer}' has {message}"):
        load(path, base)
    assert not any(isinstance(m, InherBlock) for m in base.modules()), "a refused load leaves base as it was"
