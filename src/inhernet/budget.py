"""Rank allocation: which rank each factorisable layer gets, under a budget or a rule.

A budget is spent in one currency, parameters, multiply-accumulates (MACs) or measured nanoseconds:
each layer carries a :class:`Price` in that currency, and one greedy engine (:func:`allocate`) fills
any of them.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .kinds import block_params

__all__ = [
    "ENERGY_STRATEGIES", "NANOSECONDS", "RANK_MULTIPLE", "LayerCost", "Price", "allocate", "energy_weights",
    "floor_rank", "latency_price", "layer_type", "mac_price", "ranks_for_energy", "ranks_for_rank", "round_rank",
]

#: a latency budget's currency: integer nanoseconds (per second)
NANOSECONDS = 10**9

# The rank multiple of the deployed form. Measured under load on a shared 2-core x86 CPU, torch eager, one
# thread, batch 1, microseconds per call, 31 interleaved repetitions:
#   rank                    57    60    63    64    65    68    71    72    80
#   Linear 384->384        91    93   108    89    96    98   117   101   106   (dense 223)
#   Linear 384->1536      199   202   221   204   216   214   238   227   250   (dense 1108)
#   Conv2d 32->64 k3      437   436   446   421   514   510   516   522   507   (dense 323)
# Ranks just below a multiple of 8 (63, 71) ran 5-20% slower than the multiple of 8 above them; the
# conv's cost steps at multiples of 16 (65-80 flat). 8 is the default: it avoids the slow ranks at a
# cost of at most 7 ranks per layer; 16 suits convs a little better (and tensor cores).
#: ``compact()`` rounds factorised ranks down to a multiple of this, and a latency budget allocates
#: ranks in these steps, so that the two agree (see :func:`round_rank`)
RANK_MULTIPLE = 8


def round_rank(rank: int, multiple: int) -> int:
    """``rank`` rounded down to a multiple of ``multiple``; a rank below the multiple is kept as it is.

    The ranks this leaves unchanged (below ``multiple``, or multiples of it) are the ones a rank-stepped
    allocation (:attr:`LayerCost.multiple`) chooses from.
    """
    return rank if rank < multiple else rank // multiple * multiple


@dataclass(frozen=True)
class Price:
    """What a layer costs in one currency: ``dense`` as the teacher's layer, ``base + unit * r`` as a block.

    Parameters and MACs of an InherNet block are both affine in its rank r; its measured time is
    fitted by an affine function (:func:`latency_price`).
    """

    dense: int
    base: int
    unit: int

    def __call__(self, rank: int | None) -> int:
        """The cost at ``rank`` (``None`` = the dense teacher layer)."""
        return self.dense if rank is None else self.base + self.unit * rank


def param_price(m: int, n: int, experts: int, bias: bool, dense: int) -> Price:
    """Parameters: ``r*n + h*r*m (+ h*r + h for the gate if h > 1) (+ m for a bias)``."""
    base = block_params(m, n, 0, experts, bias)
    return Price(dense, base, block_params(m, n, 1, experts, bias) - base)


def mac_price(
    m: int, experts: int, positions: int, gate_positions: int, dense_rate: int, down_rate: int
) -> Price:
    """MACs of one forward pass, as PyTorch's FLOP counter charges them.

    ``positions`` is the number of output positions the layer computed on the example input (tokens,
    or samples x output pixels); ``dense_rate`` the teacher layer's MACs per position (``m*n``; 0 for an
    embedding lookup), ``down_rate`` the down-projection's MACs per position and rank (``n``; 0 for a
    lookup). The fused up-projection costs ``h*m`` per position and rank, the gate ``Linear(r, h)``
    ``h`` per rank at each of its ``gate_positions`` (every token for linear layers, one per sample
    for convs); biases, the gate's softmax and scaling are not counted.
    """
    gate = experts * gate_positions if experts > 1 else 0
    return Price(dense_rate * positions, 0, positions * (down_rate + experts * m) + gate)


def latency_price(dense_seconds: float, points: Sequence[tuple[int, float]]) -> Price:
    """Measured time in integer nanoseconds: ``dense_seconds`` as the dense layer's price, and the line
    ``base + unit * r`` fitted by least squares to ``points`` ((rank, seconds) of the factorised form).

    ``unit`` is at least 1 ns (a timing that does not grow with the rank is noise, and the allocator
    needs each rank to cost something) and ``base`` at least 0; a single point gives ``unit = 1``.
    """
    if not points:
        raise ValueError("latency_price needs at least one (rank, seconds) point of the factorised form")
    ranks = np.array([float(r) for r, _ in points])
    ns = np.array([float(s) * NANOSECONDS for _, s in points])
    if len(set(ranks.tolist())) < 2:
        unit = 1.0
        base = float(ns.mean()) - ranks[0]
    else:
        unit, base = (float(v) for v in np.polyfit(ranks, ns, 1))
    return Price(round(dense_seconds * NANOSECONDS), max(0, round(base)), max(1, round(unit)))


@dataclass
class LayerCost:
    """A factorisable layer as the allocator sees it: its shape, price and spectrum.

    ``price`` is what the allocator spends (default: parameters); ``params`` stays the parameter count
    whatever the currency. ``multiple``: the ranks the allocation may choose are those below it and its
    multiples (1: every rank); a latency budget uses :data:`RANK_MULTIPLE`, the ranks ``compact()``
    keeps, so that the measured budget is spent on ranks that are deployed as they are.
    """

    name: str
    m: int
    n: int
    bias: bool
    experts: int
    dense: int
    #: squared singular values, descending; in output units (whitened: each one's truncation loss per
    #: calibration row, see :attr:`inhernet.decomposition.Factors.output_energy`)
    energy: torch.Tensor | None = None
    price: Price | None = None
    multiple: int = 1

    def __post_init__(self) -> None:
        if self.price is None:
            self.price = param_price(self.m, self.n, self.experts, self.bias, self.dense)
        if self.multiple < 1:
            raise ValueError(f"LayerCost.multiple must be >= 1, got {self.multiple}")

    @property
    def max_rank(self) -> int:
        return min(self.m, self.n)

    def params(self, rank: int | None) -> int:
        """Parameters at ``rank`` (``None`` = the dense teacher layer)."""
        return self.dense if rank is None else block_params(self.m, self.n, rank, self.experts, self.bias)

    def cost(self, rank: int | None) -> int:
        """The price at ``rank`` (``None`` = the dense teacher layer), in the allocation's currency."""
        assert self.price is not None
        return self.price(rank)

    @property
    def break_even(self) -> int:
        """The largest allowed rank whose block costs less than the dense layer (0 if none does)."""
        assert self.price is not None
        dense, base, unit = self.price.dense, self.price.base, self.price.unit
        if unit <= 0:  # a layer that costs nothing at any rank (e.g. it never ran): nothing to save
            return 0
        return round_rank(max(0, min(self.max_rank, -(-(dense - base) // unit) - 1)), self.multiple)

    def next_rank(self, rank: int) -> int:
        """The allowed rank after ``rank``: ``rank + 1`` below :attr:`multiple`, else the next multiple."""
        return rank + 1 if rank + 1 <= self.multiple else (rank // self.multiple + 1) * self.multiple

    def allowed(self, start: int) -> list[int]:
        """The allowed ranks from ``start`` (an allowed rank) to :attr:`break_even`."""
        below = range(start, min(self.break_even, self.multiple - 1) + 1)
        return [*below, *range(max(start, self.multiple), self.break_even + 1, self.multiple)]

    def saves(self, rank: int) -> bool:
        return self.cost(rank) < self.cost(None)


def floor_rank(layer: LayerCost, min_rank: int, min_rank_ratio: float = 0.0) -> int:
    """The smallest rank ``layer`` may get: ``min_rank``, or ``min_rank_ratio`` of its full rank if larger."""
    return min(layer.max_rank, max(min_rank, math.ceil(min_rank_ratio * layer.max_rank)))


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
