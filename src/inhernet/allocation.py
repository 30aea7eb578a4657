"""Allocate: the rank of every factorisable layer under the configuration's rule or budget.

The step after measuring (:mod:`inhernet.spectra`): each open layer priced (:func:`layer_cost`) in
parameters or, under a MAC or latency budget, in MACs or measured nanoseconds on the example input; a
budget turned into a target and filled by the greedy engine of :mod:`inhernet.greedy`, per
``budgets`` group where there are groups.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .config import InherConfig
from .costs.prices import RANK_MULTIPLE, LayerCost, floor_rank, mac_price
from .costs.profile import LatencyProfile, MacProfile, Profile
from .discovery import Candidate, matches
from .families import FAMILY_DEFAULTS
from .greedy import allocate, minimum_cost, ranks_for_energy, ranks_for_rank
from .kinds import dense_params

__all__ = [
    "BUDGET_TOLERANCE", "Allocation", "Profile", "allocate_ranks", "check_reachable", "dense_reason", "layer_cost", "reach",
]

# A plan under a budget (parameters, MACs or measured time) lands at or below it and within 2% of it.
BUDGET_TOLERANCE = 0.98


@dataclass(frozen=True)
class _Currency:
    """How a budget's currency is named in messages."""

    unit: str  # what is counted: "parameters", "MACs", "ns"
    budget: str  # what the budget is called
    option: str  # the InherConfig field
    teacher: str  # qualifies the teacher's total
    field: str = "target_params"  # the Allocation (and Plan) field that records the target


PARAMS = _Currency("parameters", "budget", "budget", "")
PARAMS_REST = _Currency("parameters", "budget", "budget", " matched by no budgets pattern")
MACS = _Currency("MACs", "MAC budget", "macs", " on the example input", "target_macs")
LATENCY = _Currency(
    "ns", "latency budget", "latency", " measured for the teacher on the example input", "target_latency_ns"
)
CURRENCIES = {"params": PARAMS, "macs": MACS, "latency": LATENCY}


@dataclass
class Allocation:
    """The ranks (``None``: dense) and the targets they were filled to (``None`` without a budget)."""

    ranks: dict[str, int | None]
    target_params: int | None = None
    target_macs: int | None = None
    target_latency_ns: int | None = None


def layer_cost(
    c: Candidate, experts: int, energy: torch.Tensor | None, profile: Profile | None = None
) -> LayerCost:
    """The allocator's view of a layer (``energy``: its squared singular values, if known); priced in MACs
    or measured nanoseconds when a profile is given, else in parameters.

    Priced in measured time, its ranks step by :data:`~inhernet.costs.RANK_MULTIPLE` (ranks below it one
    by one): the ranks ``compact()`` deploys unchanged, so the compact model spends the latency budget
    the plan predicts instead of landing under it after rounding.
    """
    m, n = c.kind.shape(c.module)
    price = None
    multiple = 1
    if isinstance(profile, LatencyProfile):
        price, multiple = profile.price(c.name), RANK_MULTIPLE
    elif profile is not None:
        positions, gate_positions = profile.positions.get(c.name, (0, 0))
        price = mac_price(m, experts, positions, gate_positions, *c.kind.mac_rates(c.module))
    return LayerCost(
        c.name, m, n, c.kind.bias(c.module) is not None, experts, dense_params(c.module), energy, price, multiple,
    )


def allocate_ranks(
    model: nn.Module, config: InherConfig, layers: list[LayerCost], profile: Profile | None
) -> Allocation:
    """Ranks for ``layers`` (priced in MACs or nanoseconds when ``profile`` is given) by the rule or
    budget of ``config``."""
    target = config.target
    if target.kind == "rank":
        return Allocation(ranks_for_rank(layers, target.value, config.min_rank, config.min_rank_ratio))
    if target.kind == "energy":
        return Allocation(ranks_for_energy(layers, target.value, config.min_rank, config.min_rank_ratio))
    if config.budgets:
        ranks, total = _fill_groups(model, layers, config)
        return Allocation(ranks, target_params=total)
    terms = _budget_terms(config, profile, sum(p.numel() for p in model.parameters()))
    assert terms is not None, "a MAC or latency budget is priced by its profile"
    amount, whole, currency, fixed = terms
    ranks = _fill(layers, amount, whole, currency, config, fixed=fixed)
    return Allocation(ranks, **{currency.field: amount})


def dense_reason(layer: LayerCost, config: InherConfig, profile: Profile | None) -> str:
    """Why the allocation left an open layer dense."""
    unit = "MACs" if isinstance(profile, MacProfile) else "parameters"
    floor = floor_rank(layer, config.min_rank, config.min_rank_ratio)
    if isinstance(profile, MacProfile) and profile.positions.get(layer.name, (0, 0))[0] == 0:
        return "did not run on the example input; kept dense"
    if isinstance(profile, LatencyProfile):
        if layer.name not in profile.prices:
            return "did not run on the example input; kept dense"
        if layer.break_even < floor:
            return "no rank at or above its floor rank runs faster than the dense layer (measured); kept dense"
    if layer.break_even < config.min_rank:
        return f"no rank saves {unit}; kept dense"
    if layer.break_even < floor:
        return f"no rank saves {unit} at or above its floor rank {floor}; kept dense"
    return "dense fits the budget better than any rank"


def warn_if_under(reached: int | None, goal: int | None, currency_name: str = "params") -> None:
    """Warn when a budgeted plan lands more than 2% under its target (the steps were too coarse);
    ``currency_name``: ``"params"``, ``"macs"`` or ``"latency"``."""
    currency = CURRENCIES[currency_name]
    if goal is not None and reached is not None and reached < BUDGET_TOLERANCE * goal:
        warnings.warn(
            f"the plan reaches {reached:,} {currency.unit}, more than 2% under the {currency.budget} of "
            f"{goal:,}: no choice of ranks (or of layers left dense) lands within 2% of it",
            stacklevel=4,
        )


def _fill(
    layers: list[LayerCost], target: int, teacher_total: int, currency: _Currency, config: InherConfig,
    fixed: int | None = None,
) -> dict[str, int | None]:
    """Ranks whose total cost (the fixed rest of the model included) fits ``target``, or a clear error.

    ``fixed``: what the rest of the model costs (default: ``teacher_total`` minus the layers' dense
    costs, exact for counted currencies; a measured one passes its own, never negative).
    """
    fixed, floor_ratio = _reachable(layers, target, teacher_total, currency, config, fixed)
    at_least = math.ceil(BUDGET_TOLERANCE * target) - fixed  # the promise: within 2% of the target
    return allocate(layers, target - fixed, config.allocation, config.min_rank, floor_ratio, at_least)


def _reachable(
    layers: list[LayerCost], target: int, teacher_total: int, currency: _Currency, config: InherConfig,
    fixed: int | None = None,
) -> tuple[int, float]:
    """The fixed rest's cost and the rank floor :func:`_fill` allocates with, or the error of a ``target``
    below the smallest total these layers can reach (see :func:`_fill` for ``fixed``)."""
    fixed, floor_ratio, smallest = _smallest(layers, target, teacher_total, config, fixed)
    if target < smallest:
        raise ValueError(
            f"{currency.budget} of {target:,} {currency.unit} ({target / teacher_total:.1%} of "
            f"{teacher_total:,}{currency.teacher}) is unreachable: the smallest reachable is {smallest:,} "
            f"({smallest / teacher_total:.1%}) with min_rank={config.min_rank}, min_rank_ratio={floor_ratio:g}, experts={config.experts} "
            f"and these include/exclude patterns; raise the {currency.budget}, lower experts or factorise "
            "more layers"
        )
    return fixed, floor_ratio


def _smallest(
    layers: list[LayerCost], target: int, teacher_total: int, config: InherConfig, fixed: int | None = None,
) -> tuple[int, float, int]:
    """The fixed rest's cost, the rank floor and the smallest total (the fixed rest plus every layer at
    its floor rank, or dense where no rank saves) for ``target`` (see :func:`_fill` for ``fixed``)."""
    if fixed is None:
        fixed = teacher_total - sum(layer.cost(None) for layer in layers)
    floor_ratio = _reachable_floor(layers, target - fixed, config)
    return fixed, floor_ratio, fixed + minimum_cost(layers, config.min_rank, floor_ratio)


def _budget_terms(
    config: InherConfig, profile: Profile | None, params: int | None
) -> tuple[int, int, _Currency, int | None] | None:
    """``(target, teacher total, currency, fixed rest)`` of ``config``'s budget: MACs or ns priced by
    ``profile`` (a latency fraction is of the original teacher's time, :attr:`LatencyProfile.reference`),
    or parameters of a model of ``params`` parameters (when given); ``None`` for a rank or energy rule,
    per-group ``budgets``, or a budget without what it is priced by."""
    target = config.target
    if target.kind == "latency" and isinstance(profile, LatencyProfile):
        return _target(target.value, profile.reference, LATENCY), profile.reference, LATENCY, profile.fixed()
    if target.kind == "macs" and isinstance(profile, MacProfile):
        return _target(target.value, profile.total, MACS), profile.total, MACS, None
    if target.kind != "params" or config.budgets or params is None:
        return None
    return _target(target.value, params, PARAMS), params, PARAMS, None


def check_reachable(config: InherConfig, layers: list[LayerCost], profile: Profile | None) -> None:
    """Raise the allocation's own error when a MAC or latency budget is out of reach of ``layers``
    (priced by ``profile``; their spectra are not needed), before the calibration pass and the SVDs that
    the allocation itself needs."""
    terms = _budget_terms(config, profile, None)
    if terms is None:
        return
    target, total, currency, fixed = terms
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a lowered family floor is announced by the allocation itself
        _reachable(layers, target, total, currency, config, fixed)


def reach(
    config: InherConfig, layers: list[LayerCost], profile: Profile | None, params: int
) -> tuple[int, int, str]:
    """``(target, smallest, unit)``: the budget's target and the smallest total that ``layers`` can reach
    (each at its floor rank, or dense where no rank saves), in the budget's unit, for a model of
    ``params`` parameters whose layers are priced by ``profile`` (MACs, ns) or in parameters. From the
    prices alone, no spectrum needed: what ``prune="auto"`` brackets its shares by. A ``target`` below
    ``smallest`` is unreachable (the allocation would refuse it).

    Raises:
        ValueError: ``config`` has no single budget (a rank or energy rule, or per-group ``budgets``).
    """
    terms = _budget_terms(config, profile, params)
    if terms is None:
        raise ValueError("reach() needs one budget: budget=, macs= or latency= (not a rank or energy rule, nor budgets=)")
    target, total, currency, fixed = terms
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a lowered family floor is announced by the allocation itself
        smallest = _smallest(layers, target, total, config, fixed)[2]
    return target, smallest, currency.unit


def _reachable_floor(layers: list[LayerCost], room: int, config: InherConfig) -> float:
    """The rank floor to allocate with: ``config.min_rank_ratio``, except that a family's default floor
    (e.g. causal LMs' 25%) is lowered, with a warning, as far as a budget below it needs — a default
    should never make a budget unreachable. A floor the user chose differently stays hard."""
    ratio = config.min_rank_ratio or 0.0
    family = FAMILY_DEFAULTS.get(config.family) if config.family else None
    if not ratio or family is None or ratio != family.min_rank_ratio:
        return ratio
    if minimum_cost(layers, config.min_rank, ratio) <= room:
        return ratio
    lo, hi = 0.0, ratio  # bisect on the largest floor that still fits
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if minimum_cost(layers, config.min_rank, mid) <= room else (lo, mid)
    warnings.warn(
        f"the {config.family} family's rank floor min_rank_ratio={ratio} does not fit this budget; lowered "
        f"to {lo:.3f} (pass min_rank_ratio= to choose it)",
        stacklevel=4,
    )
    return lo


def _fill_groups(
    model: nn.Module, layers: list[LayerCost], config: InherConfig
) -> tuple[dict[str, int | None], int]:
    """Ranks under ``config.budgets``: each pattern's group filled to its own budget, the rest to
    ``config.budget``; returns the ranks and the summed target."""
    patterns = tuple(config.budgets)
    owned = _params_by_group(model, patterns)
    grouped: dict[str | None, list[LayerCost]] = {p: [] for p in (*patterns, None)}
    for layer in layers:
        grouped[_group_of(layer.name, patterns)].append(layer)
    ranks: dict[str, int | None] = {}
    total = 0
    for pattern in (*patterns, None):
        if pattern is None and not grouped[None]:
            total += owned[None]  # nothing left to factorise outside the groups (e.g. a logit scale)
            continue
        if pattern is None:
            budget, currency = config.budget, PARAMS_REST
        else:
            budget = config.budgets[pattern]
            currency = _Currency(
                "parameters", f"budget of {pattern!r}", f"budgets[{pattern!r}]", f" matched by {pattern!r}"
            )
        assert budget is not None
        target = _target(budget, owned[pattern], currency)
        ranks.update(_fill(grouped[pattern], target, owned[pattern], currency, config))
        total += target
    return ranks, total


def _group_of(name: str, patterns: tuple[str, ...]) -> str | None:
    """The one pattern of ``budgets`` that matches module ``name`` (``None``: the rest)."""
    hits = [p for p in patterns if matches(name, (p,)) is not None]
    if len(hits) > 1:
        raise ValueError(
            f"module {name!r} is matched by budgets patterns {hits[0]!r} and {hits[1]!r}; each module may "
            "belong to one group only: make the patterns disjoint"
        )
    return hits[0] if hits else None


def _params_by_group(model: nn.Module, patterns: tuple[str, ...]) -> dict[str | None, int]:
    """Teacher parameters per ``budgets`` pattern (``None``: the rest); a pattern matching none is an error."""
    owned: dict[str | None, int] = dict.fromkeys((*patterns, None), 0)
    seen: set[int] = set()
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if id(p) not in seen:  # a tied parameter counts once, with its first owner
                seen.add(id(p))
                owned[_group_of(name, patterns)] += p.numel()
    for pattern in patterns:
        if owned[pattern] == 0:
            sample = ", ".join(n for n, _ in list(model.named_children())[:6])
            raise ValueError(
                f"budgets pattern {pattern!r} matches no module with parameters; top-level modules are "
                f"e.g. {sample}"
            )
    return owned


def _target(budget: float | int, teacher_total: int, currency: _Currency) -> int:
    if isinstance(budget, float):
        return int(budget * teacher_total)
    if budget > teacher_total:
        raise ValueError(
            f"{currency.option}={budget:,} {currency.unit} exceeds the teacher's {teacher_total:,}"
            f"{currency.teacher}; give a smaller count or a fraction in (0, 1]"
        )
    return budget
