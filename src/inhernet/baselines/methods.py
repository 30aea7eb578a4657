"""Benchmark methods, registered by name: each builds the model that is then distilled.

Every method sees the same teacher, budget, calibration data and seed; the matched baselines are
sized from the InherNet model (never fewer parameters than it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import InherConfig
from ..plan import Plan
from ..surgery import inherit
from .layerdrop import drop_layers, layer_stack, spread_layers

__all__ = ["DEFAULT_METHODS", "METHODS", "MethodContext", "build_student", "register_method"]

#: What ``bench`` compares unless a preset or the user says otherwise.
DEFAULT_METHODS = ("inhernet", "kd-student", "svd-kd", "inhernet-random-init", "inhernet-plain")


@dataclass
class MethodContext:
    """What a method needs to build its student."""

    teacher: nn.Module
    budget: float | int
    experts: int
    calib: list[Any]
    seed: int = 0
    #: builds the conventional student of the teacher's family with at least this many parameters
    student_builder: Callable[[int], nn.Module] | None = None
    #: the InherNet reference (its plan and size), set once "inhernet" has been built
    reference: nn.Module | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def reference_plan(self) -> Plan:
        if self.reference is None:
            raise ValueError("build the 'inhernet' method first: the baselines are sized from it")
        return self.reference.inhernet_plan

    def config(self, **overrides: Any) -> InherConfig:
        base: dict[str, Any] = dict(budget=self.budget, experts=self.experts, init="whiten", seed=self.seed)
        base.update(overrides)
        return InherConfig(**base)


Builder = Callable[[MethodContext], nn.Module]
METHODS: dict[str, Builder] = {}


def register_method(name: str) -> Callable[[Builder], Builder]:
    def _register(builder: Builder) -> Builder:
        METHODS[name] = builder
        return builder

    return _register


def build_student(name: str, ctx: MethodContext) -> nn.Module:
    """Build method ``name``'s student, seeded by ``ctx.seed``."""
    try:
        builder = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        return builder(ctx)


@register_method("inhernet")
def _inhernet(ctx: MethodContext) -> nn.Module:
    """Whitened init, h experts."""
    return inherit(ctx.teacher, ctx.config(), calib=ctx.calib, progress=False)


@register_method("inhernet-plain")
def _inhernet_plain(ctx: MethodContext) -> nn.Module:
    """Plain SVD init, h experts."""
    return inherit(ctx.teacher, ctx.config(init="svd"), progress=False)


@register_method("svd-kd")
def _svd_kd(ctx: MethodContext) -> nn.Module:
    """The classic low-rank baseline: one expert, plain truncated SVD."""
    return inherit(ctx.teacher, ctx.config(init="svd", experts=1), progress=False)


@register_method("inhernet-random-init")
def _inhernet_random(ctx: MethodContext) -> nn.Module:
    """InherNet's exact structure with random weights: isolates the value of inheritance."""
    plan = ctx.reference_plan
    return inherit(ctx.teacher, ctx.config(init="random"), plan=plan, progress=False)


@register_method("kd-student")
def _kd_student(ctx: MethodContext) -> nn.Module:
    """A conventional narrower model of the teacher's family, at least as large as the InherNet."""
    if ctx.student_builder is None:
        raise ValueError("this preset has no conventional student builder")
    return ctx.student_builder(ctx.reference_plan.total_params)


@register_method("layerdrop-kd")
def _layerdrop_kd(ctx: MethodContext) -> nn.Module:
    """DistilBERT-style: the teacher with every other layer of its stack dropped, weights inherited.

    More layers are kept (spread evenly) when half of them would be smaller than the InherNet model.
    """
    _, stack = layer_stack(ctx.teacher)
    n, target = len(stack), ctx.reference_plan.total_params
    for k in range(-(-n // 2), n + 1):
        student = drop_layers(ctx.teacher, spread_layers(n, k))
        if sum(p.numel() for p in student.parameters()) >= target:
            return student
    raise ValueError(f"even all {n} layers of the teacher stay below the InherNet's {target:,} parameters")
