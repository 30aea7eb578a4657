"""``plan()``: which layers to factorise at which rank, and what the model will weigh — no mutation.

The Plan dataclasses and the orchestration of the core's one-way flow: configure
(:mod:`inhernet.config`) -> find layers (:mod:`inhernet.discovery`, :mod:`inhernet.readers`) -> measure
(:mod:`inhernet.spectra`: calibration, spectra, MACs) -> allocate (:mod:`inhernet.allocation`). Building
the model (:mod:`inhernet.surgery`) comes after.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from . import blockdrop
from .allocation import (
    BUDGET_TOLERANCE,
    Profile,
    allocate_ranks,
    check_reachable,
    dense_reason,
    layer_cost,
    warn_if_under,
)
from .calibration import peek_example
from .config import InherConfig
from .costs.prices import LayerCost
from .costs.profile import LatencyProfile, MacProfile, profile_latency, profile_macs
from .costs.table import LatencyCosts
from .discovery import Candidate, Unsupported, find_layers
from .kinds import dense_params
from .pruning import PruneRecord, after_pruning, inner_config, prune_for
from .spectra import allocation_needs_spectra, layer_spectra

__all__ = ["BUDGET_TOLERANCE", "LayerPlan", "Plan", "make_plan", "plan", "with_drop", "with_prune"]

FACTORISED = "factorised"


@dataclass
class LayerPlan:
    """One row of the plan: a module that owns parameters, and what happens to it."""

    name: str
    kind: str
    shape: str
    rank: int | None
    max_rank: int | None
    experts: int
    params_before: int
    params_after: int
    reason: str

    @property
    def factorised(self) -> bool:
        return self.rank is not None


@dataclass
class Plan:
    """The per-layer table and totals of an inheritance; ``str(plan)`` prints it.

    The MAC fields are known under a MAC budget (``InherConfig(macs=...)``), ``None`` otherwise: the
    multiply-accumulates of one forward pass on the example input (the first calib batch, whole) of
    the teacher, of the target and of the inherited model, as :func:`inhernet.count_macs`
    counts them.

    The latency fields are known under a latency budget (``InherConfig(latency=...)``), ``None``
    otherwise, in integer nanoseconds: the teacher's measured forward pass on the example input, the
    target, and the plan's predicted total (the fixed rest of the model plus each layer's price from
    the cost table, see :class:`inhernet.spectra.LatencyProfile`).

    With ``InherConfig(prune=...)``, ``prune`` records the pruning step (:class:`inhernet.pruning.PruneRecord`);
    the layers are those of the pruned model, while ``teacher_params`` / ``teacher_macs`` /
    ``teacher_latency_ns`` stay the original teacher's, which the budget and :attr:`ratio` refer to (the
    predicted ``total_latency_ns`` is the pruned model's: its measured fixed rest plus its layers' prices).
    With ``InherConfig(drop_blocks=...)``, ``drop`` records the blocks dropped
    (:class:`inhernet.blockdrop.DropRecord`); the layers are those of the blocks kept, ``teacher_params``
    the original teacher's.
    """

    config: InherConfig
    teacher_params: int
    target_params: int | None
    layers: list[LayerPlan] = field(default_factory=list)
    teacher_macs: int | None = None
    target_macs: int | None = None
    total_macs: int | None = None
    teacher_latency_ns: int | None = None
    target_latency_ns: int | None = None
    total_latency_ns: int | None = None
    prune: PruneRecord | None = None
    #: under a latency budget, each timing of the compact student against the teacher (interleaved):
    #: ``{"planned": the latency fraction planned with, "measured": the measured ratio, the worst of
    #: ``"by_batch"`` (the ratio at the example's rows and at one row)}``, the student
    #: built marked ``"kept": True``; more than one when the first plan measured outside the window of
    #: the budget and was planned again (see :data:`inhernet.surgery.LATENCY_CHECK_WINDOW`)
    latency_checks: list[dict[str, Any]] | None = None
    drop: blockdrop.DropRecord | None = None

    @property
    def total_params(self) -> int:
        """Parameters of the inherited model, everything included."""
        start = next((r.params for r in (self.prune, self.drop) if r is not None), self.teacher_params)
        return start - sum(r.params_before - r.params_after for r in self.layers)

    @property
    def ratio(self) -> float:
        return self.total_params / self.teacher_params

    @property
    def in_window(self) -> bool:
        """Whether a budgeted plan lands within 2% under its target (parameters, MACs or predicted
        latency); always ``True`` without a target (a rank or energy rule)."""
        for total, target in ((self.total_latency_ns, self.target_latency_ns), (self.total_macs, self.target_macs),
                              (self.total_params, self.target_params)):
            if target is not None and total is not None:
                return total >= BUDGET_TOLERANCE * target
        return True

    @property
    def factorised(self) -> list[LayerPlan]:
        return [r for r in self.layers if r.factorised]

    def ranks(self) -> dict[str, int]:
        return {r.name: r.rank for r in self.layers if r.rank is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "teacher_params": self.teacher_params,
            "target_params": self.target_params,
            "total_params": self.total_params,
            "teacher_macs": self.teacher_macs,
            "target_macs": self.target_macs,
            "total_macs": self.total_macs,
            "teacher_latency_ns": self.teacher_latency_ns,
            "target_latency_ns": self.target_latency_ns,
            "total_latency_ns": self.total_latency_ns,
            "layers": [asdict(r) for r in self.layers],
            **({"prune": self.prune.to_dict()} if self.prune is not None else {}),
            **({"drop": self.drop.to_dict()} if self.drop is not None else {}),
            **({"latency_checks": self.latency_checks} if self.latency_checks is not None else {}),
        }

    def to_markdown(self) -> str:
        head = "| layer | kind | shape | rank | params before | params after | note |\n|---|---|---|---:|---:|---:|---|"
        rows = [
            f"| {r.name or '(root)'} | {r.kind} | {r.shape} | "
            f"{'' if r.rank is None else f'{r.rank}/{r.max_rank}'} | {r.params_before:,} | "
            f"{r.params_after:,} | {r.reason} |"
            for r in self.layers
        ]
        return "\n".join([head, *rows, "", self.summary()])

    def summary(self) -> str:
        target = f", target {self.target_params:,}" if self.target_params is not None else ""
        text = "".join(f"{r.summary()}; then " for r in (self.prune, self.drop) if r is not None)
        text += (
            f"{len(self.factorised)} of {len(self.layers)} layers factorised, experts={self.config.experts}, "
            f"init={self.config.init}: {self.teacher_params:,} -> {self.total_params:,} parameters "
            f"({self.ratio:.1%}{target})"
        )
        if self.teacher_macs is not None and self.total_macs is not None:
            share = self.total_macs / self.teacher_macs if self.teacher_macs else 1.0
            target = f", target {self.target_macs:,}" if self.target_macs is not None else ""
            text += f"; {self.teacher_macs:,} -> {self.total_macs:,} MACs ({share:.1%}{target})"
        if self.teacher_latency_ns is not None and self.total_latency_ns is not None:
            share = self.total_latency_ns / self.teacher_latency_ns if self.teacher_latency_ns else 1.0
            target = f", target {_ms(self.target_latency_ns)}" if self.target_latency_ns is not None else ""
            text += (
                f"; latency {_ms(self.teacher_latency_ns)} measured -> {_ms(self.total_latency_ns)} predicted "
                f"by the cost table on the example input ({share:.1%}{target})"
            )
        kept = next((c for c in self.latency_checks or [] if c.get("kept")), None)
        if kept is not None:
            text += f"; the compact model measured {kept['measured']:.1%} of the teacher's time"
            if len(kept.get("by_batch", {})) > 1:
                text += " (the worst of " + ", ".join(
                    f"{r:.1%} at {rows} rows" for rows, r in kept["by_batch"].items()) + ")"
            if kept is not self.latency_checks[0]:
                text += (f" (planned at {kept['planned']:.1%}: the first plan measured "
                         f"{self.latency_checks[0]['measured']:.1%})")
        return text

    def __str__(self) -> str:
        return self.to_markdown()


def _ms(ns: int) -> str:
    """Nanoseconds as milliseconds for the summary."""
    return f"{ns / 1e6:.3f} ms"


def make_plan(
    model: nn.Module, config: InherConfig, candidates: list[Candidate], others: list[Unsupported],
    spectra: dict[str, torch.Tensor], profile: Profile | None = None,
) -> Plan:
    """Allocate ranks and tabulate; ``spectra`` (each layer's energies) may be empty where none is needed.

    ``profile`` is needed under a MAC budget (:func:`inhernet.spectra.profile_macs`: prices the layers
    in MACs) or a latency budget (:func:`inhernet.spectra.profile_latency`: in measured nanoseconds).
    """
    teacher_params = sum(p.numel() for p in model.parameters())
    h = config.experts
    kind = config.target.kind
    if kind == "macs" and not isinstance(profile, MacProfile):
        raise ValueError("a MAC budget (macs=) needs the MAC profile of an example input: pass calib=")
    if kind == "latency" and not isinstance(profile, LatencyProfile):
        raise ValueError("latency= needs calib: its first batch is the example input")
    if kind not in ("macs", "latency"):
        profile = None
    open_layers = open_costs(candidates, config, profile, spectra)
    if not open_layers:
        found = ", ".join(sorted({type(c.module).__name__ for c in candidates})) or "none"
        raise ValueError(
            "nothing to factorise: the model has no nn.Linear, nn.Conv1d/2d (groups=1), nn.Embedding or "
            f"Hugging Face Conv1D layer left after include/exclude (supported layers found: {found})"
        )
    allocation = allocate_ranks(model, config, open_layers, profile)
    ranks = allocation.ranks

    rows = [LayerPlan(o.name, o.type_name, "-", None, None, 1, o.params, o.params, o.reason) for o in others]
    costs = {layer.name: layer for layer in open_layers}
    for c in candidates:
        own = dense_params(c.module)
        shape = c.kind.describe(c.module)
        if c.reason is not None:
            rows.append(LayerPlan(c.name, c.kind.name, shape, None, None, 1, own, own, c.reason))
            continue
        layer = costs[c.name]
        rank = ranks[c.name]
        if rank is None:
            reason = dense_reason(layer, config, profile)
            rows.append(LayerPlan(c.name, c.kind.name, shape, None, layer.max_rank, 1, own, own, reason))
        else:
            rows.append(LayerPlan(
                c.name, c.kind.name, shape, rank, layer.max_rank, h, own, layer.params(rank), FACTORISED,
            ))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    result = Plan(config, teacher_params, allocation.target_params, sorted(rows, key=lambda r: order.get(r.name, -1)))
    if isinstance(profile, LatencyProfile):
        result.teacher_latency_ns, result.target_latency_ns = profile.reference, allocation.target_latency_ns
        result.total_latency_ns = profile.fixed() + sum(layer.cost(ranks[layer.name]) for layer in open_layers)
        warn_if_under(result.total_latency_ns, result.target_latency_ns, "latency")
    elif profile is not None:
        result.teacher_macs, result.target_macs = profile.total, allocation.target_macs
        result.total_macs = profile.total - sum(
            layer.cost(None) - layer.cost(ranks[layer.name]) for layer in open_layers
        )
        warn_if_under(result.total_macs, result.target_macs, "macs")
    else:
        warn_if_under(result.total_params, result.target_params, "params")
    return result


def open_costs(
    candidates: list[Candidate], config: InherConfig, profile: Profile | None,
    spectra: dict[str, torch.Tensor] | None = None,
) -> list[LayerCost]:
    """The allocator's view (:func:`~inhernet.allocation.layer_cost`) of each open candidate, priced by
    ``profile`` under a MAC or latency budget, with its energies from ``spectra`` where known."""
    spectra = spectra or {}
    return [layer_cost(c, config.experts, spectra.get(c.name), profile) for c in candidates if c.reason is None]


def with_prune(plan: Plan, config: InherConfig, record: PruneRecord) -> Plan:
    """``plan`` (of the pruned model) as the plan of the whole hybrid: the user's ``config`` (with its
    ``prune``), the pruning ``record``, and the original teacher's totals the budget refers to."""
    plan.config, plan.prune, plan.teacher_params = config, record, record.teacher_params
    if plan.teacher_macs is not None and record.teacher_macs is not None:
        plan.teacher_macs = record.teacher_macs
    return plan


def with_drop(plan: Plan, config: InherConfig, record: blockdrop.DropRecord) -> Plan:
    """``plan`` (of the model without the dropped blocks) as the plan of the whole: the user's ``config``
    (with its ``drop_blocks``), the ``record``, and the original teacher's parameters the budget refers to."""
    plan.config, plan.drop, plan.teacher_params = config, record, record.teacher_params
    return plan


def measure(
    model: nn.Module, config: InherConfig, candidates: list[Candidate], calib: Iterable[Any] | None,
    costs: LatencyCosts | None = None, latency_base: int | None = None,
) -> tuple[Profile | None, Iterable[Any] | None]:
    """The profile a MAC or latency budget prices the layers by (``None`` for the others), and ``calib``
    to iterate in full afterwards. ``latency_base``: the time a ``latency=`` fraction is taken of, when
    ``model`` is a pruned copy of the teacher (the teacher's measured time; see
    :attr:`inhernet.spectra.LatencyProfile.base`)."""
    if config.target.kind == "macs":
        return profile_macs(model, candidates, calib)
    if config.target.kind == "latency":
        return profile_latency(model, candidates, calib, costs, latency_base)
    return None, calib


#: a budgeted plan that cuts a layer of at least BOTTLENECK_WIDTH possible ranks to BOTTLENECK_RANK or less is
#: warned about: EfficientNet-Lite0 at 10% of its parameters put six layers at rank <= 2 (one at 1 of 320) and
#: ended 2,000 KD steps at 62-75% accuracy, against 88.0% when channels were pruned first (BENCHMARKS.md)
BOTTLENECK_RANK = 2
BOTTLENECK_WIDTH = 32


def warn_if_bottlenecked(result: Plan) -> None:
    """Warn when a budget drove layers to a rank KD trains through poorly, and suggest pruning first."""
    c = result.config
    if result.prune is not None or not c.target.budgeted:
        return
    narrow = [r for r in result.layers if r.factorised and r.rank <= BOTTLENECK_RANK
              and (r.max_rank or 0) >= BOTTLENECK_WIDTH]
    if not narrow:
        return
    worst = min(narrow, key=lambda r: r.rank / (r.max_rank or 1))
    warnings.warn(
        f"the budget cuts {len(narrow)} layer(s) to rank <= {BOTTLENECK_RANK} (e.g. {worst.name}: rank {worst.rank} "
        f"of {worst.max_rank}): a bottleneck that KD trains through poorly. InherConfig(prune='auto') removes "
        "channels first where the rank cut alone would go this far; or raise the budget",
        stacklevel=3,
    )


def plan(
    model: nn.Module, config: InherConfig | None = None, calib: Iterable[Any] | None = None, *,
    costs: LatencyCosts | None = None,
) -> Plan:
    """Compute the per-layer ranks and parameter totals of ``inherit(model, config, calib)``.

    The model is not modified. Spectra are computed where the allocation needs them; energy
    allocation with ``init="whiten"`` needs ``calib`` for the whitened spectra. A MAC budget
    (``macs=``) needs ``calib`` too: its first batch, whole, is the example input whose MACs
    (:func:`inhernet.count_macs`) are budgeted. So does a latency budget (``latency=``), whose
    first batch is the example input timed; ``costs`` is the cost table it is priced by (anything with
    ``dense``, ``factorised`` and ``latency``, see :class:`inhernet.costs.table.LatencyCosts`; default
    a :class:`inhernet.CostTable` for the model's device and the current thread count, cached on
    disk). ``costs`` is unused by the other budgets.
    """
    config = (config or InherConfig()).resolved(model)  # the family's defaults for the auto fields
    if config.drop_blocks:
        calib = list(calib) if calib is not None else None  # Block Influence reads it first
        dropped, record = blockdrop.drop_for(config, model, calib)
        result = with_drop(_plan_resolved(dropped, blockdrop.inner_config(config, record), calib, costs), config, record)
    else:
        result = _plan_resolved(model, config, calib, costs)
    warn_if_bottlenecked(result)
    return result


def _plan_resolved(
    model: nn.Module, config: InherConfig, calib: Iterable[Any] | None, costs: LatencyCosts | None
) -> Plan:
    """:func:`plan` of a resolved config without blocks to drop."""
    example, calib = peek_example(calib)
    if config.prune is not None:
        if config.prune == "auto":
            raise ValueError(
                "prune='auto' chooses the share of channels by building and scoring each candidate student: "
                "call inherit() (its plan is student.inhernet_plan), or give plan() a share, e.g. prune=0.3"
            )
        pruned, record = prune_for(config, model, example, config.prune, costs)
        inner = inner_config(config, record)
        with after_pruning(record):
            inner_plan = _plan(pruned, inner, example, calib, costs, record.teacher_latency_ns)
        return with_prune(inner_plan, config, record)
    return _plan(model, config, example, calib, costs)


def _plan(
    model: nn.Module, config: InherConfig, example: Any, calib: Iterable[Any] | None, costs: LatencyCosts | None,
    latency_base: int | None = None,
) -> Plan:
    """:func:`plan` without pruning, ``config`` resolved (``latency_base``: see :func:`measure`)."""
    candidates, others = find_layers(model, config, example)
    profile, calib = measure(model, config, candidates, calib, costs, latency_base)
    check_reachable(config, open_costs(candidates, config, profile), profile)  # before the spectra
    spectra = layer_spectra(model, candidates, config, calib) if allocation_needs_spectra(config) else {}
    return make_plan(model, config, candidates, others, spectra, profile)
