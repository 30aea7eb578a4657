"""Benchmark methods, registered by name: each builds the model that is then distilled.

Every method sees the same teacher, budget, calibration data and seed; the matched baselines are
sized from the InherNet model: never fewer parameters than it or, with ``match="macs"``, never fewer
multiply-accumulates (the budget is then a MAC budget, measured on the first calibration batch) or,
with ``match="latency"``, never a shorter measured latency (the budget is then a latency budget,
``InherConfig(latency=...)``).

Latency is measured on the deployed form (:func:`inhernet.deploy.compact` for a model with InherNet
blocks, the model itself otherwise), on the first calibration batch, whole, by the cost table's
``latency`` (a :class:`~inhernet.deploy.CostTable`: medians of interleaved repetitions). Every model
is timed interleaved with the compact InherNet reference and reported on its scale (the reference's
time, measured once, times the ratio of the two), so that a machine that slows down during a long
bisection does not move the comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from inhernet.calibration import split_example
from inhernet.config import InherConfig
from inhernet.costs import count_macs
from inhernet.costs.prices import NANOSECONDS
from inhernet.deploy import deployed
from inhernet.experimental import ExperimentalConfig
from inhernet.pipeline import inherit
from inhernet.plan import Plan
from inhernet.pruning import LATENCY_ROUND_TO
from inhernet.stack import layer_stack
from inhernet_bench.baselines.layerdrop import block_influence, drop_layers, most_important, spread_layers
from inhernet_bench.baselines.prune import default_importance, prune_to_size

if TYPE_CHECKING:
    from inhernet.costs.table import LatencyCosts

__all__ = ["DEFAULT_METHODS", "IMPORTANCE_BATCHES", "LAYERDROP_SHARE", "MATCHES", "METHODS", "MethodContext", "build_student", "register_method"]

#: what "the same size" can mean, and the unit of ``MethodContext.size`` for each
MATCHES = {"params": "parameters", "macs": "MACs", "latency": "ns of measured latency"}

#: layerdrop-kd measures block importance on this many calibration batches (Block Influence is an average
#: that settles within a few thousand tokens; every batch costs a teacher forward pass)
IMPORTANCE_BATCHES = 8
#: inhernet-layerdrop pays about this share of the parameters the budget cuts by dropping whole blocks, the
#: rest by rank cuts. SmolLM2-135M at 80%, zero-shot perplexity on 16k BBC tokens (4k calibration tokens,
#: benchmarks/smollm2_drop_inherit.py): 2 of 30 blocks dropped 119.8, 4 121.7, 7 120.7; none (InherNet) 147.2
LAYERDROP_SHARE = 0.5

#: What ``bench`` compares unless a preset or the user says otherwise.
DEFAULT_METHODS = ("inhernet", "inhernet-paper", "kd-student", "svd-kd", "prune-kd", "inhernet-random-init", "inhernet-plain")


@dataclass
class MethodContext:
    """What a method needs to build its student."""

    teacher: nn.Module
    budget: float | int
    #: ``None``: the model family's default (see :mod:`inhernet.families`)
    experts: int | None
    calib: list[Any]
    seed: int = 0
    #: builds the conventional student of the teacher's family with at least this many parameters
    student_builder: Callable[[int], nn.Module] | None = None
    #: the InherNet reference (its plan and size), set once "inhernet" has been built
    reference: nn.Module | None = None
    #: what "the same size" means: parameters, multiply-accumulates or measured latency (of the deployed
    #: form), both on the first calibration batch
    match: Literal["params", "macs", "latency"] = "params"
    #: method options: ``prune_importance`` (``prune-kd``'s channel ranking; default the teacher family's,
    #: :func:`~inhernet_bench.baselines.prune.default_importance`)
    extras: dict[str, Any] = field(default_factory=dict)
    #: with ``match="latency"``: what times layers and models (see :class:`inhernet.deploy.costs.LatencyCosts`);
    #: default a :class:`~inhernet.deploy.CostTable` on the teacher's device at the current thread count
    costs: LatencyCosts | None = None
    #: ``InherConfig`` options of every InherNet method, under the method's own (see :meth:`config`)
    inherit_overrides: dict[str, Any] = field(default_factory=dict)
    #: (reference, its deployed form, its measured ns): what latencies are measured against
    _anchor: tuple[nn.Module, nn.Module, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.match not in MATCHES:
            raise ValueError(f"match must be one of {tuple(MATCHES)}, got {self.match!r}")
        if self.extras.get("prune_importance") is None:
            self.extras["prune_importance"] = default_importance(self.teacher)
        if self.match == "latency":
            from inhernet.costs.table import CostTable, LatencyCosts

            if self.costs is None:
                device = next((p.device for p in self.teacher.parameters()), torch.device("cpu"))
                self.costs = CostTable(device)
            if not isinstance(self.costs, LatencyCosts):
                raise TypeError(
                    "costs must have dense(shape), factorised(shape, rank) and latency(models, example) methods "
                    f"(e.g. an inhernet.deploy.CostTable), got {type(self.costs).__name__}"
                )
            if not (isinstance(self.costs, _TeacherTimedOnce) and self.costs.teacher is self.teacher):
                self.costs = _TeacherTimedOnce(self.costs, self.teacher)

    @property
    def unit(self) -> str:
        """The matched unit in words, for messages."""
        return MATCHES[self.match]

    @property
    def latency_costs(self) -> LatencyCosts | None:
        """What ``inherit`` prices a latency budget with (``None`` unless ``match="latency"``)."""
        return self.costs if self.match == "latency" else None

    @property
    def reference_plan(self) -> Plan:
        if self.reference is None:
            raise ValueError("build the 'inhernet' method first: the baselines are sized from it")
        return self.reference.inhernet_plan

    def config(self, **overrides: Any) -> ExperimentalConfig:
        base: dict[str, Any] = dict(experts=self.experts, init="whiten", seed=self.seed)
        base[self.match if self.match in ("macs", "latency") else "budget"] = self.budget
        base.update(self.inherit_overrides)
        base.update(overrides)
        return ExperimentalConfig(**base)

    @property
    def plain_calib(self) -> list[Any] | None:
        """What a plain-SVD method passes as ``calib``: only a MAC or latency budget needs its example input."""
        return self.calib if self.match in ("macs", "latency") else None

    def size(self, model: nn.Module) -> int:
        """``model``'s size in the matched unit (latency: nanoseconds, see :meth:`latency_ns`)."""
        if self.match == "macs":
            return count_macs(model, split_example(self.calib, "a MAC match")[0])
        if self.match == "latency":
            return self.latency_ns(model)
        return sum(p.numel() for p in model.parameters())

    def deployed(self, model: nn.Module) -> nn.Module:
        """What is deployed of ``model``: :func:`~inhernet.deploy.compact` of it when it holds InherNet
        blocks (a copy, on the first calibration batch at its batch size), else ``model`` itself."""
        return deployed(model, self.calib, example=split_example(self.calib, "a latency match")[0], costs=self.costs)

    def latency_ns(self, model: nn.Module) -> int:
        """The measured latency of ``model``'s deployed form on the first calibration batch, in ns.

        The compact InherNet reference is timed once; any other model is timed interleaved with it
        (one call of the cost table's ``latency``) and reported as the reference's time times the
        ratio of the two.
        """
        if self.reference is None:
            raise ValueError("build the 'inhernet' method first: latencies are measured against it")
        assert self.costs is not None
        example = split_example(self.calib, "a latency match")[0]
        if self._anchor is None or self._anchor[0] is not self.reference:
            ref = self.deployed(self.reference)
            self._anchor = (self.reference, ref, _ns(self.costs.latency([ref], example)[0]))
        _, ref, ref_ns = self._anchor
        if model is self.reference:
            return ref_ns
        ref_s, model_s = self.costs.latency([ref, self.deployed(model)], example)
        return round(ref_ns * float(model_s) / max(float(ref_s), 1e-12))

    @property
    def target(self) -> int:
        """The InherNet reference's size in the matched unit: the least a baseline may have."""
        if self.reference is None:
            raise ValueError("build the 'inhernet' method first: the baselines are sized from it")
        return self.size(self.reference)


def _ns(seconds: float) -> int:
    return round(float(seconds) * NANOSECONDS)


class _TeacherTimedOnce:
    """``costs``, but the teacher alone is timed once: every latency budget built from it (each seed's
    reference, the plain-SVD methods) starts from the same measured teacher time, so that they get the
    same plan. Share one between contexts (``MethodContext(costs=other.costs)``) to share that time."""

    def __init__(self, costs: LatencyCosts, teacher: nn.Module) -> None:
        self.costs, self.teacher = costs, teacher
        self.points = getattr(costs, "points", 4)
        self._teacher_s: float | None = None

    def dense(self, shape: Any) -> float:
        return self.costs.dense(shape)

    def factorised(self, shape: Any, rank: int) -> float:
        return self.costs.factorised(shape, rank)

    def latency(self, models: Any, example: Any) -> list[float]:
        if len(models) == 1 and models[0] is self.teacher:
            if self._teacher_s is None:
                self._teacher_s = float(self.costs.latency(models, example)[0])
            return [self._teacher_s]
        return list(self.costs.latency(models, example))


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
    """The default recipe for the teacher's family (experts, rank floor, calibration; see
    :mod:`inhernet.families`), whitened init, unless ``ctx.experts`` fixes h."""
    return inherit(ctx.teacher, ctx.config(), calib=ctx.calib, progress=False, costs=ctx.latency_costs)


@register_method("inhernet-paper")
def _inhernet_paper(ctx: MethodContext) -> nn.Module:
    """The method as published: h = 3 experts, one-pass whitening, no rank floor, every block kept."""
    paper = InherConfig.paper()
    fields = {k: getattr(paper, k) for k in ("experts", "calibration", "min_rank_ratio", "drop_blocks")}
    return inherit(ctx.teacher, ctx.config(**fields), calib=ctx.calib, progress=False, costs=ctx.latency_costs)


@register_method("inhernet-plain")
def _inhernet_plain(ctx: MethodContext) -> nn.Module:
    """Plain SVD init, the family's experts (or ``ctx.experts``)."""
    return inherit(
        ctx.teacher, ctx.config(init="svd"), ctx.plain_calib, progress=False, costs=ctx.latency_costs
    )


@register_method("svd-kd")
def _svd_kd(ctx: MethodContext) -> nn.Module:
    """The classic low-rank baseline: one expert, plain truncated SVD."""
    return inherit(
        ctx.teacher, ctx.config(init="svd", experts=1), ctx.plain_calib, progress=False, costs=ctx.latency_costs
    )


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
    if ctx.match == "params":
        return ctx.student_builder(ctx.target)
    # The builders are sized in parameters: search the parameter floor whose student first reaches the
    # InherNet's MACs or measured latency (both grow with width, like parameters).
    target, lo, hi = ctx.target, 1, sum(p.numel() for p in ctx.teacher.parameters())
    best = ctx.student_builder(hi)
    if ctx.size(best) < target:
        raise ValueError(f"a student as large as the teacher stays below the InherNet's {target:,} {ctx.unit}")
    while hi - lo > max(1, hi // 200):
        mid = (lo + hi) // 2
        student = ctx.student_builder(mid)
        if ctx.size(student) >= target:
            hi, best = mid, student
        else:
            lo = mid
    return best


@register_method("layerdrop-kd")
def _layerdrop_kd(ctx: MethodContext) -> nn.Module:
    """The teacher with whole blocks of its stack dropped, weights inherited: the blocks kept are the most
    important by Block Influence (ShortGPT) on the first :data:`IMPORTANCE_BATCHES` calibration batches, or,
    without calibration data, every other one (DistilBERT-style).

    Half of the blocks are kept, more when half of them would be smaller than the InherNet model.
    """
    _, stack = layer_stack(ctx.teacher)
    n, target = len(stack), ctx.target
    scores = block_influence(ctx.teacher, ctx.calib[:IMPORTANCE_BATCHES]) if ctx.calib else None
    for k in range(-(-n // 2), n + 1):
        student = drop_layers(ctx.teacher, most_important(scores, k) if scores else spread_layers(n, k))
        if ctx.size(student) >= target:
            return student
    raise ValueError(f"even all {n} layers of the teacher stay below the InherNet's {target:,} {ctx.unit}")


@register_method("prune-kd")
def _prune_kd(ctx: MethodContext) -> nn.Module:
    """The teacher pruned structurally (Torch-Pruning, whole channels and heads) to at least the InherNet's size.

    ``ctx.extras["prune_importance"]``: ``"l2"`` (default) or ``"taylor"``.
    """
    example = split_example(ctx.calib, "prune-kd")[0]
    options: dict[str, Any] = {"importance": ctx.extras.get("prune_importance", "l2")}
    if ctx.match == "latency":  # pruned as the hybrid prunes under a latency budget
        options["round_to"] = LATENCY_ROUND_TO
    return prune_to_size(ctx.teacher, example, ctx.target, ctx.size, **options)


@register_method("inhernet-layerdrop")
def _inhernet_layerdrop(ctx: MethodContext) -> nn.Module:
    """The hybrid for a stack of transformer blocks (``InherConfig(drop_blocks=LAYERDROP_SHARE)``): the blocks
    of lowest Block Influence dropped for about that share of the parameters the budget cuts, the rest paid by
    rank cuts at the same budget (the family's recipe otherwise). Parameter budgets."""
    if ctx.match != "params":
        raise ValueError(f"inhernet-layerdrop is sized in parameters, not {ctx.unit}; use --match params")
    return inherit(ctx.teacher, ctx.config(drop_blocks=LAYERDROP_SHARE), calib=ctx.calib, progress=False)


@register_method("inhernet-prune")
def _inhernet_prune(ctx: MethodContext) -> nn.Module:
    """The hybrid: the teacher pruned by Torch-Pruning, then inherited at the same budget, the share of
    channels pruned chosen among candidates bracketed by the budget, by the KL to the teacher after a
    few KD steps on the calibration batches (``InherConfig(prune="auto")``, see :mod:`inhernet.autoprune`);
    the family's recipe otherwise."""
    return inherit(ctx.teacher, ctx.config(prune="auto"), calib=ctx.calib, progress=False, costs=ctx.latency_costs)
