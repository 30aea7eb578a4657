"""The greedy engine: ranks for a list of priced layers (:class:`~inhernet.costs.LayerCost`) that fit an
amount, or follow a rank or energy rule. Pure: no model, no config; :mod:`inhernet.allocation` turns a
config's budget into the amount.

A budget is spent in one currency, parameters, multiply-accumulates (MACs) or measured nanoseconds:
each layer carries a :class:`~inhernet.costs.Price` in that currency, and one engine (:func:`allocate`)
fills any of them.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .costs.prices import LayerCost, floor_rank, round_rank

__all__ = [
    "ENERGY_STRATEGIES", "allocate", "energy_weights", "layer_type", "minimum_cost", "ranks_for_energy",
    "ranks_for_rank",
]


def _start(layer: LayerCost, min_rank: int, min_rank_ratio: float) -> int | None:
    """Where the allocation starts for ``layer``: the first allowed rank at or above its floor, or dense
    (``None``) if that saves nothing."""
    start = floor_rank(layer, min_rank, min_rank_ratio)
    if round_rank(start, layer.multiple) != start:
        start = layer.next_rank(start)
    return start if start <= layer.break_even else None


Priority = Callable[[LayerCost, int, int], float]

#: the allocation strategies that rank moves by (weighted) energy: see :func:`energy_weights`
ENERGY_STRATEGIES = ("energy", "loss", "loss-by-type")


def layer_type(name: str) -> str:
    """A layer's matrix type: its name with the numeric path parts (block indices) as ``*``, e.g.
    ``model.layers.*.self_attn.q_proj`` for every block's ``q_proj``."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def energy_weights(layers: Sequence[LayerCost], strategy: str) -> dict[str, float]:
    """What one unit of each layer's energy is worth to an energy strategy (or, for ``"uniform"``, to its
    exact fill).

    ``"energy"`` (and ``"uniform"``): ``1 / the layer's total``, so that every layer's spectrum counts as
    fractions of itself (a layer's whole energy is worth 1, however small it is in absolute terms).
    ``"loss"``: 1, so that a singular value is worth its absolute whitened truncation loss (SVD-LLM: dropping
    sigma_i of ``W S_x`` adds exactly ``sigma_i^2`` to ``||W X - W' X||^2 / N``), compared across all layers.
    ``"loss-by-type"``: ``1 / the mean total of the layer's type`` (:func:`layer_type`), so that absolute
    losses are compared within a matrix type (q, k, v, o, gate, up, down...), whose outputs live in the same
    space, and each type's typical layer weighs the same (SVD-LLM V2's normalisation within groups of the
    same matrix type). A layer whose energy (or type's) is zero is worth nothing.
    """
    totals = {layer.name: float(layer.energy.sum()) for layer in layers if layer.energy is not None}
    if strategy == "loss":
        return dict.fromkeys(totals, 1.0)
    if strategy == "loss-by-type":
        by_type: dict[str, list[float]] = defaultdict(list)
        for name, total in totals.items():
            by_type[layer_type(name)].append(total)
        mean = {t: sum(v) / len(v) for t, v in by_type.items()}
        return {name: 1.0 / mean[layer_type(name)] if mean[layer_type(name)] > 0 else 0.0 for name in totals}
    return {name: 1.0 / total if total > 0 else 0.0 for name, total in totals.items()}


def _energy_priority(weights: dict[str, float]) -> Priority:
    """Weighted energy (:func:`energy_weights`) gained per unit of cost (parameter or MAC) by the move
    from ``rank`` (to the next allowed rank, or to dense)."""

    def priority(layer: LayerCost, rank: int, cost: int) -> float:
        assert layer.energy is not None
        stop = layer.next_rank(rank) if rank < layer.break_even else layer.max_rank
        return weights[layer.name] * float(layer.energy[rank:stop].sum()) / cost

    return priority


def _uniform_priority(layer: LayerCost, rank: int, cost: int) -> float:
    """Lowest relative rank first: water-filling keeps one rank ratio r/k across layers."""
    return -(rank + 1) / layer.max_rank


def allocate(
    layers: list[LayerCost], available: int, strategy: str, min_rank: int, min_rank_ratio: float = 0.0,
    at_least: int | None = None,
) -> dict[str, int | None]:
    """Ranks whose costs (each layer's ``price``) fit ``available`` (``None`` = keep dense), greedily.

    Every layer starts at its floor (:func:`floor_rank`, raised to an allowed rank; or dense, where even
    that saves nothing); then the best move (to the next allowed rank, see :attr:`LayerCost.multiple`,
    or back to dense once a rank no longer saves) is taken while it fits.
    ``"energy"`` ranks moves by retained energy fraction per unit of cost, parameter or MAC (a global
    greedy over singular values); ``"loss"`` by absolute (whitened) truncation loss avoided per unit of
    cost, and ``"loss-by-type"`` by that loss normalised within each matrix type (see
    :func:`energy_weights`); ``"uniform"`` by the lowest rank ratio r/k, which is water-filling on one
    common ratio (what a bisection on the ratio finds), filled up to the budget. Callers check that
    the start fits.

    ``at_least``: where the greedy lands below it (its rank steps and jumps back to dense too
    coarse for what is left), the allocation is redone exactly (:func:`_fill_window`): the most value
    — retained weighted energy, or for ``"uniform"`` the ranks nearest the greedy's ratios — among the allocations
    costing between ``at_least`` and ``available``, when there is one and the search is small enough.
    """
    if strategy not in (*ENERGY_STRATEGIES, "uniform"):
        raise ValueError(f"strategy must be one of {(*ENERGY_STRATEGIES, 'uniform')}, got {strategy!r}")
    if strategy in ENERGY_STRATEGIES and any(layer.energy is None for layer in layers):
        raise ValueError(f"{strategy} allocation needs each layer's singular values")
    weights = energy_weights(layers, strategy)
    priority: Priority = _energy_priority(weights) if strategy in ENERGY_STRATEGIES else _uniform_priority
    ranks: dict[str, int | None] = {}
    spent = 0
    heap: list[tuple[float, int, int]] = []

    def push(i: int) -> None:
        layer, rank = layers[i], ranks[layers[i].name]
        if rank is None:
            return
        cost = layer.cost(layer.next_rank(rank) if rank < layer.break_even else None) - layer.cost(rank)
        heapq.heappush(heap, (-priority(layer, rank, cost), i, cost))

    for layer in layers:
        ranks[layer.name] = _start(layer, min_rank, min_rank_ratio)
        spent += layer.cost(ranks[layer.name])
    for i in range(len(layers)):
        push(i)
    while heap:
        _, i, cost = heapq.heappop(heap)
        if spent + cost > available:
            continue  # costs only grow as the budget shrinks: this layer is done
        layer = layers[i]
        rank = ranks[layer.name]
        assert rank is not None
        ranks[layer.name] = layer.next_rank(rank) if rank < layer.break_even else None
        spent += cost
        push(i)
    if at_least is not None and spent < at_least:
        return _fill_window(layers, ranks, available, at_least, min_rank, min_rank_ratio, weights) or ranks
    return ranks


# The exact search's size: cost levels (costs are rounded up to this many steps of the budget), and the
# largest number of (option x level) updates it may run (a fraction of a second in numpy).
_LEVELS = 1 << 14
_MAX_WORK = 200_000_000


def _fill_window(
    layers: list[LayerCost], greedy: dict[str, int | None], available: int, at_least: int, min_rank: int,
    min_rank_ratio: float, weights: dict[str, float],
) -> dict[str, int | None] | None:
    """The best ranks costing between ``at_least`` and ``available``, or ``None`` if there are none or the
    search would be too big.

    A multiple-choice knapsack solved by dynamic programming over cost levels: each layer takes one of
    its ranks (floor .. break-even) or dense; the value is the retained energy weighted by ``weights``
    (:func:`energy_weights`; dense keeps it all) with spectra, else the closeness of each layer's rank
    ratio to the greedy's. Costs are rounded up to a
    level, so that every level-feasible choice fits ``available``; the lower bound is checked exactly.
    """
    options: list[list[tuple[int | None, int, float]]] = []
    for layer in layers:
        start = _start(layer, min_rank, min_rank_ratio)
        choices: list[int | None] = [None] if start is None else [*layer.allowed(start), None]
        weight = weights.get(layer.name, 0.0)
        options.append([(r, layer.cost(r), _value(layer, r, greedy[layer.name], weight)) for r in choices])
    step = max(1, -(-available // _LEVELS))
    levels = available // step + 1
    if sum(len(o) for o in options) * levels > _MAX_WORK:
        return None
    best = np.full(levels, -np.inf)
    best[0] = 0.0
    picks = np.zeros((len(layers), levels), dtype=np.int32)
    for i, opts in enumerate(options):
        new = np.full(levels, -np.inf)
        pick = np.full(levels, -1, dtype=np.int32)
        for j, (_, cost, value) in enumerate(opts):
            u = -(-cost // step)
            if u >= levels:
                continue
            shifted = np.full(levels, -np.inf)
            shifted[u:] = best[: levels - u] + value
            better = shifted > new
            new[better] = shifted[better]
            pick[better] = j
        best, picks[i] = new, pick
    lowest = at_least // step  # no fewer levels can cost at_least
    for end in sorted((s for s in range(lowest, levels) if np.isfinite(best[s])), key=lambda s: -best[s])[:64]:
        ranks, level, total = {}, end, 0
        for i in range(len(layers) - 1, -1, -1):
            rank, cost, _ = options[i][picks[i][level]]
            ranks[layers[i].name] = rank
            total += cost
            level -= -(-cost // step)
        if at_least <= total <= available:
            return ranks
    return None


def _value(layer: LayerCost, rank: int | None, greedy: int | None, weight: float) -> float:
    """What ``rank`` is worth to the exact fill: retained energy times ``weight``, or nearness to the
    greedy's rank ratio."""
    if layer.energy is not None:
        kept = layer.energy if rank is None else layer.energy[:rank]
        return weight * float(kept.sum())
    ratio = 1.0 if rank is None else rank / layer.max_rank
    wanted = 1.0 if greedy is None else greedy / layer.max_rank
    return -abs(ratio - wanted)


def minimum_cost(layers: list[LayerCost], min_rank: int, min_rank_ratio: float = 0.0) -> int:
    """The smallest total cost these layers can reach (each at its floor rank, or dense where that saves
    nothing)."""
    return sum(layer.cost(_start(layer, min_rank, min_rank_ratio)) for layer in layers)


def ranks_for_rank(
    layers: list[LayerCost], rank: int | float | str, min_rank: int, min_rank_ratio: float = 0.0
) -> dict[str, int | None]:
    """A fixed rank (int), fraction of full rank (float) or ``"full"`` for every layer.

    Outside ``"full"`` a layer whose block would not save parameters stays dense.
    """
    out: dict[str, int | None] = {}
    for layer in layers:
        if rank == "full":
            out[layer.name] = layer.max_rank
            continue
        r = rank if isinstance(rank, int) else math.ceil(float(rank) * layer.max_rank)
        r = max(floor_rank(layer, min_rank, min_rank_ratio), min(r, layer.max_rank))
        out[layer.name] = r if layer.saves(r) else None
    return out


def ranks_for_energy(
    layers: list[LayerCost], energy: float, min_rank: int, min_rank_ratio: float = 0.0
) -> dict[str, int | None]:
    """Per layer, the smallest rank retaining ``energy`` of its (whitened) spectral energy."""
    out: dict[str, int | None] = {}
    for layer in layers:
        assert layer.energy is not None
        cum = torch.cumsum(layer.energy, 0) / layer.energy.sum().clamp_min(1e-300)
        r = int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype)).item()) + 1
        r = max(floor_rank(layer, min_rank, min_rank_ratio), min(r, layer.max_rank))
        out[layer.name] = r if layer.saves(r) else None
    return out
