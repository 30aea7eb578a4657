"""``inherit()``: build the inherited network from a teacher."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .config import InherConfig
from .decomposition import Factors
from .kinds import LayerKind
from .layers import configure_gates
from .plan import (
    Candidate,
    LayerPlan,
    MacProfile,
    Plan,
    allocation_needs_spectra,
    decompose,
    find_layers,
    layer_spectra,
    make_plan,
    profile_macs,
    reiterable,
)

__all__ = ["inherit"]


def inherit(
    model: nn.Module,
    config: InherConfig | None = None,
    calib: Iterable[Any] | None = None,
    *,
    plan: Plan | None = None,
    progress: bool = True,
) -> nn.Module:
    """A new model in which every planned layer is an SVD-initialised InherNet block.

    Args:
        model: the teacher; it is not modified.
        config: what to inherit (default ``InherConfig()``: budget 0.25, whitened, energy allocation).
        calib: iterable of model input batches (tensors, ``(inputs, labels)`` tuples or dicts); required
            for ``init="whiten"``. A few thousand tokens / a few hundred images are typically enough.
            Under a MAC budget (``macs=``) it is required too, and its first batch, whole, is the
            example input whose MACs are budgeted.
        plan: reuse the ranks of an earlier plan (e.g. to build an ablation with the same structure).
        progress: show a progress bar while calibrating.

    Returns:
        A deep copy of ``model`` with InherNet blocks in place of the planned layers. With
        ``init="whiten"`` or ``"svd"`` it computes the rank-r truncation of every layer at init
        (exactly the teacher with ``rank="full"``). ``student.inhernet_plan`` holds the plan.
        With sequential calibration each block is whitened on inputs that passed the compressed
        earlier blocks (``calib`` is then iterated several times).
    """
    config = config or (plan.config if plan is not None else InherConfig())
    candidates, others = find_layers(model, config)
    profile = None
    if plan is None and config.macs is not None:
        profile, calib = profile_macs(model, candidates, calib)
    if config.init == "whiten" and config.calibration != "one-pass":
        return _inherit_sequential(model, config, calib, candidates, others, profile, plan, progress)
    needs_factors = config.init != "random" or (plan is None and allocation_needs_spectra(config))
    factors = decompose(model, candidates, config, calib, progress=progress) if needs_factors else {}
    if plan is None:
        plan = make_plan(model, config, candidates, others, {n: f.energy for n, f in factors.items()}, profile)
    by_name = _planned(plan, candidates)

    student = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for name, rank in plan.ranks().items():
            c = by_name[name]
            block = _build_block(c.module, c.kind, rank, factors.get(name), config, generator)
            student = replace_module(student, name, block)
    student.inhernet_plan = plan
    return student


def _inherit_sequential(
    model: nn.Module, config: InherConfig, calib: Iterable[Any] | None, candidates: list[Candidate],
    others: list[LayerPlan], profile: MacProfile | None, plan: Plan | None, progress: bool,
) -> nn.Module:
    """``inherit`` with sequential calibration: ranks from the teacher's spectra, factors block by block."""
    from .sequential import sequential_calibrate

    calib = reiterable(calib)
    if plan is None:
        spectra = layer_spectra(model, candidates, config, calib, progress=progress) if (
            allocation_needs_spectra(config)) else {}
        plan = make_plan(model, config, candidates, others, spectra, profile)
    ranks = plan.ranks()
    by_name = _planned(plan, candidates)
    student = copy.deepcopy(model)
    # The student's own modules (a deep copy), so that the compressed ones feed the later stages.
    todo = {name: (student.get_submodule(name), by_name[name].kind) for name in ranks}
    generator = torch.Generator().manual_seed(config.seed)

    def compress(name: str, module: nn.Module, kind: LayerKind, factors: Factors) -> nn.Module:
        return _build_block(module, kind, ranks[name], factors, config, generator)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        teacher = model if config.calibration == "sequential-corrected" else None
        sequential_calibrate(
            student, todo, calib, compress, teacher=teacher, damping=config.damping, progress=progress
        )
    student.inhernet_plan = plan
    return student


def _planned(plan: Plan, candidates: list[Candidate]) -> dict[str, Candidate]:
    """The candidates by name, checking that the plan factorises only layers this model can."""
    by_name = {c.name: c for c in candidates if c.reason is None}
    unknown = sorted(set(plan.ranks()) - set(by_name))
    if unknown:
        raise ValueError(f"the plan factorises layers this model cannot: {', '.join(unknown)}")
    return by_name


def _build_block(
    module: nn.Module, kind: LayerKind, rank: int, factors: Factors | None, config: InherConfig,
    generator: torch.Generator,
) -> nn.Module:
    """The InherNet block replacing ``module`` at ``rank``: from ``factors``, or random with ``init="random"``."""
    block = kind.build(module, rank, config.experts)
    if config.init == "random":
        _reset_random(block)
    else:
        assert factors is not None, "inherited init needs the layer's factors"
        down, up = factors.truncated(rank)
        block.inherit_(down, up, kind.bias(module), expert_noise=config.expert_noise, generator=generator)
    configure_gates(block, routing=config.routing, gate_pool=config.gate_pool, generator=generator)
    block.source = kind.spec(module)
    block.train(module.training)  # a new module starts in training mode; keep the teacher's
    return block


def replace_module(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at dotted ``name`` inside ``root``; returns the (possibly new) root."""
    if not name:
        return module
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
    return root


def _reset_random(block: nn.Module) -> None:
    for module in block.modules():
        if module is not block and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    gate = getattr(block, "gate", None)
    if gate is not None:
        nn.init.zeros_(gate.weight)
        nn.init.zeros_(gate.bias)
