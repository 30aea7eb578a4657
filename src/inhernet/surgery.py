"""``inherit()``: build the inherited network from a teacher."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .config import InherConfig
from .plan import Plan, allocation_needs_spectra, decompose, find_layers, make_plan, profile_macs

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
    """
    config = config or (plan.config if plan is not None else InherConfig())
    candidates, others = find_layers(model, config)
    profile = None
    if plan is None and config.macs is not None:
        profile, calib = profile_macs(model, candidates, calib)
    needs_factors = config.init != "random" or (plan is None and allocation_needs_spectra(config))
    factors = decompose(model, candidates, config, calib, progress=progress) if needs_factors else {}
    if plan is None:
        plan = make_plan(model, config, candidates, others, factors, profile)
    ranks = plan.ranks()
    by_name = {c.name: c for c in candidates if c.reason is None}
    unknown = sorted(set(ranks) - set(by_name))
    if unknown:
        raise ValueError(f"the plan factorises layers this model cannot: {', '.join(unknown)}")

    student = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for name, rank in ranks.items():
            c = by_name[name]
            block = c.kind.build(c.module, rank, config.experts)
            if config.init == "random":
                _reset_random(block)
            else:
                down, up = factors[name].truncated(rank)
                block.inherit_(
                    down, up, c.kind.bias(c.module), expert_noise=config.expert_noise, generator=generator
                )
            block.source = c.kind.spec(c.module)
            block.train(c.module.training)  # a new module starts in training mode; keep the teacher's
            student = replace_module(student, name, block)
    student.inhernet_plan = plan
    return student


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
