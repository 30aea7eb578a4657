"""Allocate: every factorisable layer's rank, the :class:`~inhernet.plan.Plan`.

:func:`make_plan` fills the budget with the layers the pipeline found and measured, by the greedy engine
(:func:`inhernet.costs.prices.allocate`), per ``budgets`` group where there are groups;
:func:`refuse_unreachable` says before any measuring that a budget is out of reach.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import InherConfig, Target
from .costs.prices import RANK_MULTIPLE, LayerCost, allocate, floor_rank, mac_price, minimum_cost
from .costs.profile import LatencyProfile, MacProfile, Profile, profile_for
from .costs.table import LatencyCosts
from .discovery import Candidate, Unsupported, find_layers, matches
from .families import FAMILY_DEFAULTS
from .kinds import dense_params
from .plan import BUDGET_TOLERANCE, FACTORISED, LayerPlan, Plan

__all__ = ["Allocation", "Unreachable", "dense_reason", "layer_cost", "make_plan", "refuse_unreachable", "smallest_reach"]


def refuse_unreachable(config: InherConfig, candidates: list[Candidate], profile: Profile | None, params: int) -> None:
    """The error of a budget below the smallest reachable (every layer at its floor rank), before anything
    is measured beyond the ``profile``; ``params``: the model's parameters."""
    terms = _budget_terms(config, profile, params)
    if terms is not None:
        target, total, currency, fixed = terms
        _quietly(_reachable, _open_costs(candidates, config, profile), target, total, currency, config, fixed)


def smallest_reach(
    model: nn.Module, config: InherConfig, example: Any, costs: LatencyCosts | None, latency_base: int | None,
    params: int,
) -> tuple[int, int, str]:
    """``(target, smallest, unit)`` of ``model``'s layers priced on ``example``: the budget's target and the
    smallest total the layers reach (each at its floor rank; no spectrum needed), in the budget's unit, for
    a model of ``params`` parameters. What ``prune="auto"`` brackets by."""
    candidates, _, layers = find_layers(model, config, example)
    profile, _ = profile_for(model, config, layers, [example], costs, latency_base)
    terms = _budget_terms(config, profile, params)
    if terms is None:
        raise ValueError(
            "smallest_reach() needs one budget: budget=, macs= or latency= (not a rank or energy rule, "
            "nor budgets=)"
        )
    target, total, currency, fixed = terms
    smallest = _quietly(_smallest, _open_costs(candidates, config, profile), target, total, config, fixed)[2]
    return target, smallest, currency.unit


class Unreachable(ValueError):
    """A budget below the smallest size that rank cuts reach; ``least``: that size as a fraction of the
    teacher's, rounded up to 0.001."""

    def __init__(self, message: str, least: float) -> None:
        super().__init__(message)
        self.least = least


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


@dataclass
class Allocation:
    """The ranks (``None``: dense), the targets they were filled to and the total they reach, in the budget's
    currency (``None`` without a budget)."""

    ranks: dict[str, int | None]
    target_params: int | None = None
    target_macs: int | None = None
    target_latency_ns: int | None = None
    reached: int | None = None


def layer_cost(
    c: Candidate, experts: int, energy: torch.Tensor | None, profile: Profile | None = None
) -> LayerCost:
    """The allocator's view of a layer (``energy``: its squared singular values, if known), priced by
    ``profile`` (MACs or ns) or in parameters. In measured time its ranks step by
    :data:`~inhernet.costs.RANK_MULTIPLE`, the ranks ``compact()`` deploys unchanged."""
    m, n = c.kind.shape(c.module)
    price, multiple = None, 1
    if isinstance(profile, LatencyProfile):
        price, multiple = profile.price(c.name), RANK_MULTIPLE
    elif profile is not None:
        positions, gate_positions = profile.positions.get(c.name, (0, 0))
        price = mac_price(m, experts, positions, gate_positions, *c.kind.mac_rates(c.module))
    return LayerCost(
        c.name, m, n, c.kind.bias(c.module) is not None, experts, dense_params(c.module), energy, price, multiple,
    )


def _allocate_ranks(
    model: nn.Module, config: InherConfig, layers: list[LayerCost], profile: Profile | None
) -> Allocation:
    if config.target.kind in ("rank", "energy"):
        return Allocation(_rule_ranks(layers, config.target, config.min_rank, config.min_rank_ratio))
    groups, total = _budget_groups(model, layers, config, profile)
    ranks: dict[str, int | None] = {}
    reached = total
    for group, target, whole, currency, fixed in groups:
        group_ranks, group_reached = _fill(group, target, whole, currency, config, fixed=fixed)
        ranks.update(group_ranks)
        total, reached = total + target, reached + group_reached
    return Allocation(ranks, **{groups[0][3].field: total}, reached=reached)


def dense_reason(layer: LayerCost, config: InherConfig, profile: Profile | None) -> str:
    """Why the allocation left an open layer dense."""
    unit = "MACs" if isinstance(profile, MacProfile) else "parameters"
    floor = floor_rank(layer, config.min_rank, config.min_rank_ratio)
    unmeasured = (
        isinstance(profile, MacProfile) and profile.positions.get(layer.name, (0, 0))[0] == 0
    ) or (isinstance(profile, LatencyProfile) and layer.name not in profile.prices)
    if unmeasured:
        return "did not run on the example input; kept dense"
    if isinstance(profile, LatencyProfile) and layer.break_even < floor:
        return "no rank at or above its floor rank runs faster than the dense layer (measured); kept dense"
    if layer.break_even < config.min_rank:
        return f"no rank saves {unit}; kept dense"
    if layer.break_even < floor:
        return f"no rank saves {unit} at or above its floor rank {floor}; kept dense"
    return "dense fits the budget better than any rank"


def _fill(
    layers: list[LayerCost], target: int, teacher_total: int, currency: _Currency, config: InherConfig,
    fixed: int | None = None,
) -> tuple[dict[str, int | None], int]:
    """Ranks whose total cost fits ``target`` and that total, or a clear error. ``fixed``: what the rest of the
    model costs (default ``teacher_total`` minus the layers' dense costs; a measured currency passes its own)."""
    fixed, floor_ratio = _reachable(layers, target, teacher_total, currency, config, fixed)
    at_least = math.ceil(BUDGET_TOLERANCE * target) - fixed  # the promise: within 2% of the target
    ranks = allocate(layers, target - fixed, config.allocation, config.min_rank, floor_ratio, at_least)
    return ranks, fixed + sum(layer.cost(ranks[layer.name]) for layer in layers)


def _reachable(
    layers: list[LayerCost], target: int, teacher_total: int, currency: _Currency, config: InherConfig,
    fixed: int | None = None,
) -> tuple[int, float]:
    """The fixed rest's cost and the rank floor, or the error of a ``target`` below the smallest reachable."""
    fixed, floor_ratio, smallest = _smallest(layers, target, teacher_total, config, fixed)
    if target < smallest:
        least = math.ceil(1000 * smallest / teacher_total) / 1000
        levers = [f"{currency.option}={least:g} or more ({smallest:,} {currency.unit})",
                  "prune='auto' or a share such as prune=0.3 (channels pruned first; not for causal LMs)",
                  "drop_blocks=0.5 (whole blocks dropped first; transformers, with budget=)"]
        levers += [f"experts=1 (now {config.experts})"] if config.experts > 1 else []
        levers += [f"min_rank_ratio=0 (now {floor_ratio:g})"] if floor_ratio > 0 else []
        raise Unreachable(
            f"{currency.budget} of {target:,} {currency.unit} ({target / teacher_total:.1%} of "
            f"{teacher_total:,}{currency.teacher}) is unreachable: the smallest reachable is {smallest:,} "
            f"({smallest / teacher_total:.1%}) with min_rank_ratio={floor_ratio:g}, experts={config.experts} "
            f"and these include/exclude patterns. What would reach it: {'; '.join(levers)}; or factorise more "
            "layers (fewer exclude= patterns, a wider include=)",
            least,
        )
    return fixed, floor_ratio


def _smallest(
    layers: list[LayerCost], target: int, teacher_total: int, config: InherConfig, fixed: int | None = None,
) -> tuple[int, float, int]:
    """The fixed rest's cost, the rank floor and the smallest total (every layer at its floor rank)."""
    if fixed is None:
        fixed = teacher_total - sum(layer.cost(None) for layer in layers)
    floor_ratio = _reachable_floor(layers, target - fixed, config)
    return fixed, floor_ratio, fixed + minimum_cost(layers, config.min_rank, floor_ratio)


def _budget_terms(
    config: InherConfig, profile: Profile | None, params: int | None
) -> tuple[int, int, _Currency, int | None] | None:
    """``(target, teacher total, currency, fixed rest)`` of ``config``'s budget, priced by ``profile`` or
    in ``params``; ``None`` for a rule, per-group ``budgets``, or a budget without its pricing."""
    target = config.target
    if target.kind == "latency" and isinstance(profile, LatencyProfile):
        return _target(target.value, profile.reference, LATENCY), profile.reference, LATENCY, profile.fixed()
    if target.kind == "macs" and isinstance(profile, MacProfile):
        return _target(target.value, profile.total, MACS), profile.total, MACS, None
    if target.kind != "params" or config.budgets or params is None:
        return None
    return _target(target.value, params, PARAMS), params, PARAMS, None


def _quietly(check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)`` without its warnings: a lowered family floor is announced by the allocation itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return check(*args)


def _reachable_floor(layers: list[LayerCost], room: int, config: InherConfig) -> float:
    """``config.min_rank_ratio``, but a family's default floor is lowered, with a warning, as far as the
    budget needs: a default never makes a budget unreachable; a floor the user chose stays."""
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


#: one budget to fill: ``(layers, target, teacher total, currency, fixed rest)``
_Group = tuple[list[LayerCost], int, int, _Currency, int | None]


def _budget_groups(
    model: nn.Module, layers: list[LayerCost], config: InherConfig, profile: Profile | None
) -> tuple[list[_Group], int]:
    """The budgets to fill: the whole model's, or one per ``config.budgets`` pattern and the unmatched rest (at
    ``config.budget``); and the parameters of a rest without layers, kept as they are (e.g. a logit scale)."""
    if not config.budgets:
        terms = _budget_terms(config, profile, sum(p.numel() for p in model.parameters()))
        assert terms is not None, "a MAC or latency budget is priced by its profile"
        return [(layers, *terms)], 0
    patterns = tuple(config.budgets)
    owned = _params_by_group(model, patterns)
    grouped: dict[str | None, list[LayerCost]] = {p: [] for p in (*patterns, None)}
    for layer in layers:
        grouped[_group_of(layer.name, patterns)].append(layer)
    groups: list[_Group] = []
    for pattern in patterns:
        currency = _Currency("parameters", f"budget of {pattern!r}", f"budgets[{pattern!r}]", f" matched by {pattern!r}")
        target = _target(config.budgets[pattern], owned[pattern], currency)
        groups.append((grouped[pattern], target, owned[pattern], currency, None))
    if not grouped[None]:
        return groups, owned[None]
    assert config.budget is not None
    rest = _target(config.budget, owned[None], PARAMS_REST)
    return [*groups, (grouped[None], rest, owned[None], PARAMS_REST, None)], 0


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
    for name, p in model.named_parameters():  # a tied parameter counts once, with its first owner
        owned[_group_of(name.rpartition(".")[0], patterns)] += p.numel()
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


def make_plan(
    model: nn.Module, config: InherConfig, candidates: list[Candidate], others: list[Unsupported],
    spectra: dict[str, torch.Tensor], profile: Profile | None = None,
) -> Plan:
    """Allocate ranks and tabulate; ``spectra`` may be empty where none is needed, ``profile`` prices a
    MAC or latency budget (:func:`inhernet.costs.profile.profile_for`)."""
    kind = config.target.kind
    if kind == "macs" and not isinstance(profile, MacProfile):
        raise ValueError("a MAC budget (macs=) needs the MAC profile of an example input: pass calib=")
    if kind == "latency" and not isinstance(profile, LatencyProfile):
        raise ValueError("latency= needs calib: its first batch is the example input")
    if kind not in ("macs", "latency"):
        profile = None
    open_layers = _open_costs(candidates, config, profile, spectra)
    allocation = _allocate_ranks(model, config, open_layers, profile)
    rows = _rows(model, config, candidates, others, open_layers, allocation.ranks, profile)
    result = Plan(config, sum(p.numel() for p in model.parameters()), allocation.target_params, rows)
    _totals(result, allocation, profile)
    return result


def _rows(
    model: nn.Module, config: InherConfig, candidates: list[Candidate], others: list[Unsupported],
    open_layers: list[LayerCost], ranks: dict[str, int | None], profile: Profile | None,
) -> list[LayerPlan]:
    """Every module with parameters and what happens to it, in module order."""
    rows = [LayerPlan(o.name, o.type_name, "-", None, None, 1, o.params, o.params, o.reason) for o in others]
    costs = {layer.name: layer for layer in open_layers}
    for c in candidates:
        own, shape = dense_params(c.module), c.kind.describe(c.module)
        if c.reason is not None:
            rows.append(LayerPlan(c.name, c.kind.name, shape, None, None, 1, own, own, c.reason))
            continue
        layer, rank = costs[c.name], ranks[c.name]
        if rank is None:
            rows.append(LayerPlan(c.name, c.kind.name, shape, None, layer.max_rank, 1, own, own,
                                  dense_reason(layer, config, profile)))
        else:
            rows.append(LayerPlan(c.name, c.kind.name, shape, rank, layer.max_rank, config.experts, own,
                                  layer.params(rank), FACTORISED))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(rows, key=lambda r: order.get(r.name, -1))


def _totals(result: Plan, allocation: Allocation, profile: Profile | None) -> None:
    """The plan's MAC or latency totals and targets; warn when it lands more than 2% under its target."""
    reached, goal, currency = result.total_params, result.target_params, PARAMS
    if isinstance(profile, LatencyProfile):
        result.teacher_latency_ns, result.target_latency_ns = profile.reference, allocation.target_latency_ns
        reached = result.total_latency_ns = allocation.reached
        goal, currency = allocation.target_latency_ns, LATENCY
    elif profile is not None:
        result.teacher_macs, result.target_macs = profile.total, allocation.target_macs
        reached = result.total_macs = allocation.reached
        goal, currency = allocation.target_macs, MACS
    if goal is not None and reached is not None and reached < BUDGET_TOLERANCE * goal:
        warnings.warn(
            f"the plan reaches {reached:,} {currency.unit}, more than 2% under the {currency.budget} of "
            f"{goal:,}: no choice of ranks (or of layers left dense) lands within 2% of it",
            stacklevel=3,
        )


def _open_costs(
    candidates: list[Candidate], config: InherConfig, profile: Profile | None,
    spectra: dict[str, torch.Tensor] | None = None,
) -> list[LayerCost]:
    """:func:`layer_cost` of each open candidate, its energies from ``spectra`` where known; an error when
    there is none."""
    spectra = spectra or {}
    layers = [layer_cost(c, config.experts, spectra.get(c.name), profile) for c in candidates if c.reason is None]
    if not layers:
        found = ", ".join(sorted({type(c.module).__name__ for c in candidates})) or "none"
        raise ValueError(
            "nothing to factorise: the model has no nn.Linear, nn.Conv1d/2d (groups=1), nn.Embedding or "
            f"Hugging Face Conv1D layer left after include/exclude (supported layers found: {found})"
        )
    return layers


def _rule_ranks(
    layers: list[LayerCost], target: Target, min_rank: int, min_rank_ratio: float
) -> dict[str, int | None]:
    """Ranks by a rule per layer: ``"rank"`` (an int, a fraction of full rank, or ``"full"``) or
    ``"energy"`` (the smallest rank retaining that share of the layer's whitened spectral energy), at
    least the floor rank; outside ``"full"`` a layer whose block saves nothing stays dense."""
    out: dict[str, int | None] = {}
    for layer in layers:
        if target.value == "full":
            out[layer.name] = layer.max_rank
            continue
        if target.kind == "energy":
            assert layer.energy is not None
            cum = torch.cumsum(layer.energy, 0) / layer.energy.sum().clamp_min(1e-300)
            r = int(torch.searchsorted(cum, torch.tensor(float(target.value) - 1e-12, dtype=cum.dtype)).item()) + 1
        else:
            value = target.value
            r = value if isinstance(value, int) else math.ceil(float(value) * layer.max_rank)
        r = max(floor_rank(layer, min_rank, min_rank_ratio), min(r, layer.max_rank))
        out[layer.name] = r if layer.saves(r) else None
    return out
