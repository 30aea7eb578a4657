"""What a layer costs: a :class:`Price` in one currency (parameters, MACs or measured nanoseconds), the
allocator's view of a factorisable layer (:class:`LayerCost`) and the greedy engine that spends a budget
on them (:func:`allocate`: ranks for a list of priced layers, no model, no config).
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ENERGY_STRATEGIES
from ..kinds import block_params

__all__ = [
    "NANOSECONDS", "RANK_MULTIPLE", "LayerCost", "Price", "allocate", "energy_weights", "floor_rank",
    "latency_price", "layer_type", "mac_price", "minimum_cost", "param_price", "round_rank",
]

#: a latency budget's currency: integer nanoseconds (per second)
NANOSECONDS = 10**9

# Why 8: on a shared 2-core x86 CPU (torch eager, one thread, batch 1) ranks just below a multiple of 8
# ran 5-20% slower than the multiple above them (Linear 384->384: 108 us at rank 63, 89 us at 64); a
# conv's cost steps at multiples of 16. 8 avoids the slow ranks at a cost of at most 7 ranks per layer.
#: ``compact()`` rounds factorised ranks down to a multiple of this, and a latency budget allocates
#: ranks in these steps, so that the two agree (see :func:`round_rank`)
RANK_MULTIPLE = 8


def round_rank(rank: int, multiple: int) -> int:
    """``rank`` rounded down to a multiple of ``multiple``; a rank below the multiple is kept as it is (the
    ranks it leaves unchanged are those a rank-stepped allocation, :attr:`LayerCost.multiple`, chooses)."""
    return rank if rank < multiple else rank // multiple * multiple


@dataclass(frozen=True)
class Price:
    """What a layer costs in one currency: ``dense`` as the teacher's layer, ``base + unit * r`` as a block
    (parameters and MACs are affine in the rank; measured time is fitted by :func:`latency_price`)."""

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
    """MACs of one forward pass, as PyTorch's FLOP counter charges them (:meth:`LayerKind.mac_rates`
    and :meth:`LayerKind.positions` give the rates and positions): ``dense_rate`` per output position
    dense; ``down_rate + h*m`` per position and rank, plus ``h`` per rank at each of the gate's
    ``gate_positions``, as a block. Biases, the gate's softmax and scaling are not counted.
    """
    gate = experts * gate_positions if experts > 1 else 0
    return Price(dense_rate * positions, 0, positions * (down_rate + experts * m) + gate)


def latency_price(dense_seconds: float, points: Sequence[tuple[int, float]]) -> Price:
    """Measured time in integer nanoseconds: ``dense_seconds`` dense, and ``base + unit * r`` fitted by
    least squares to ``points`` ((rank, seconds) factorised). ``unit`` is at least 1 ns (a timing that does
    not grow with the rank is noise, and each rank must cost something), ``base`` at least 0."""
    if not points:
        raise ValueError("latency_price needs at least one (rank, seconds) point of the factorised form")
    ranks = np.array([float(r) for r, _ in points])
    ns = np.array([float(s) * NANOSECONDS for _, s in points])
    if len(set(ranks.tolist())) < 2:
        unit, base = 1.0, float(ns.mean()) - ranks[0]
    else:
        unit, base = (float(v) for v in np.polyfit(ranks, ns, 1))
    return Price(round(dense_seconds * NANOSECONDS), max(0, round(base)), max(1, round(unit)))


@dataclass
class LayerCost:
    """A factorisable layer as the allocator sees it: its shape, price and spectrum.

    ``price`` is what the allocator spends (default: parameters); ``params`` counts parameters whatever
    the currency. ``multiple``: the allowed ranks are those below it and its multiples (a latency budget
    uses :data:`RANK_MULTIPLE`, the ranks ``compact()`` keeps).
    """

    name: str
    m: int
    n: int
    bias: bool
    experts: int
    dense: int
    #: squared singular values, descending, in output units (``inhernet.decomposition.Factors.output_energy``)
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
    """The first allowed rank at or above ``layer``'s floor, or dense (``None``) if that saves nothing."""
    start = floor_rank(layer, min_rank, min_rank_ratio)
    if round_rank(start, layer.multiple) != start:
        start = layer.next_rank(start)
    return start if start <= layer.break_even else None


Priority = Callable[[LayerCost, int, int], float]


def layer_type(name: str) -> str:
    """A layer's name with its block indices as ``*``, e.g. ``model.layers.*.self_attn.q_proj``."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def energy_weights(layers: Sequence[LayerCost], strategy: str) -> dict[str, float]:
    """What one unit of each layer's energy is worth to ``strategy``.

    ``"energy"`` (and ``"uniform"``): ``1 / the layer's total`` (each spectrum as fractions of itself).
    ``"loss"``: 1 (SVD-LLM: dropping sigma_i of ``W S_x`` adds ``sigma_i^2`` to ``||W X - W' X||^2 / N``).
    ``"loss-by-type"``: ``1 / the mean total of the layer's type`` (:func:`layer_type`; SVD-LLM V2).
    A zero total is worth nothing.
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
    """Weighted energy gained per unit of cost by the move from ``rank`` (to the next rank, or dense)."""

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
    """Ranks whose costs fit ``available`` (``None`` = keep dense), greedily: from each layer's floor, the
    best move (the next allowed rank, or dense once no rank saves) while it fits; moves ranked by weighted
    energy per unit of cost (:func:`energy_weights`), or for ``"uniform"`` by the lowest rank ratio.
    Callers check that the start fits. Below ``at_least``, the exact fill (:func:`_fill_window`) is tried.
    """
    if strategy not in (*ENERGY_STRATEGIES, "uniform"):
        raise ValueError(f"strategy must be one of {(*ENERGY_STRATEGIES, 'uniform')}, got {strategy!r}")
    if strategy in ENERGY_STRATEGIES and any(layer.energy is None for layer in layers):
        raise ValueError(f"{strategy} allocation needs each layer's singular values")
    weights = energy_weights(layers, strategy)
    priority: Priority = _energy_priority(weights) if strategy in ENERGY_STRATEGIES else _uniform_priority
    ranks = {layer.name: _start(layer, min_rank, min_rank_ratio) for layer in layers}
    spent = sum(layer.cost(ranks[layer.name]) for layer in layers)
    heap: list[tuple[float, int, int, int | None]] = []  # one move per layer: (-priority, layer, cost, to rank)

    def push(i: int) -> None:
        layer, rank = layers[i], ranks[layers[i].name]
        if rank is None:
            return
        move = layer.next_rank(rank) if rank < layer.break_even else None
        cost = layer.cost(move) - layer.cost(rank)
        heapq.heappush(heap, (-priority(layer, rank, cost), i, cost, move))

    for i in range(len(layers)):
        push(i)
    while heap:
        _, i, cost, move = heapq.heappop(heap)
        if spent + cost > available:
            continue  # costs only grow as the budget shrinks: this layer is done
        ranks[layers[i].name] = move
        spent += cost
        push(i)
    if at_least is not None and spent < at_least:
        return _fill_window(layers, ranks, available, at_least, min_rank, min_rank_ratio, weights) or ranks
    return ranks


# The exact search's size: cost levels, and the most (option x level) updates it may run.
_LEVELS = 1 << 14
_MAX_WORK = 200_000_000


def _fill_window(
    layers: list[LayerCost], greedy: dict[str, int | None], available: int, at_least: int, min_rank: int,
    min_rank_ratio: float, weights: dict[str, float],
) -> dict[str, int | None] | None:
    """The best ranks costing between ``at_least`` and ``available`` (``None``: none, or too big a search).

    A multiple-choice knapsack by dynamic programming over cost levels (costs rounded up, so every choice
    fits ``available``); value: :func:`_value`.
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
    """Retained energy times ``weight``, or nearness to the greedy's rank ratio."""
    if layer.energy is not None:
        kept = layer.energy if rank is None else layer.energy[:rank]
        return weight * float(kept.sum())
    ratio = 1.0 if rank is None else rank / layer.max_rank
    wanted = 1.0 if greedy is None else greedy / layer.max_rank
    return -abs(ratio - wanted)


def minimum_cost(layers: list[LayerCost], min_rank: int, min_rank_ratio: float = 0.0) -> int:
    """The smallest total cost of ``layers``, each at its floor rank (or dense)."""
    return sum(layer.cost(_start(layer, min_rank, min_rank_ratio)) for layer in layers)
