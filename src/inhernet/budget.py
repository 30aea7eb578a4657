"""Rank allocation: which rank each factorisable layer gets, under a parameter budget or a rule."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .kinds import block_params

__all__ = ["LayerCost", "allocate", "ranks_for_energy", "ranks_for_rank"]


@dataclass
class LayerCost:
    """A factorisable layer as the allocator sees it: its shape, cost model and spectrum."""

    name: str
    m: int
    n: int
    bias: bool
    experts: int
    dense: int
    energy: torch.Tensor | None = None  # squared singular values, descending

    @property
    def max_rank(self) -> int:
        return min(self.m, self.n)

    def params(self, rank: int | None) -> int:
        """Parameters at ``rank`` (``None`` = the dense teacher layer)."""
        return self.dense if rank is None else block_params(self.m, self.n, rank, self.experts, self.bias)

    @property
    def break_even(self) -> int:
        """The largest rank whose block is smaller than the dense layer (0 if none is)."""
        unit = self.params(1) - self.params(0)
        return max(0, min(self.max_rank, math.ceil((self.dense - self.params(0)) / unit) - 1))

    def saves(self, rank: int) -> bool:
        return self.params(rank) < self.dense

    def energy_fraction(self, start: int, stop: int) -> float:
        """Fraction of the layer's total energy held by singular values ``start..stop-1``."""
        assert self.energy is not None
        total = float(self.energy.sum())
        return float(self.energy[start:stop].sum()) / total if total > 0 else 0.0


Priority = Callable[[LayerCost, int, int], float]


def _energy_priority(layer: LayerCost, rank: int, cost: int) -> float:
    """Energy gained per parameter by the move from ``rank`` (to ``rank + 1``, or to dense)."""
    stop = rank + 1 if rank < layer.break_even else layer.max_rank
    return layer.energy_fraction(rank, stop) / cost


def _uniform_priority(layer: LayerCost, rank: int, cost: int) -> float:
    """Lowest relative rank first: water-filling keeps one rank ratio r/k across layers."""
    return -(rank + 1) / layer.max_rank


def allocate(
    layers: list[LayerCost], available: int, strategy: str, min_rank: int
) -> dict[str, int | None]:
    """Ranks that fit ``available`` parameters (``None`` = keep dense), greedily.

    Every layer starts at ``min_rank`` (or dense, where even that saves nothing); then the best move
    (one more rank, or back to dense once a rank no longer saves parameters) is taken while it fits.
    ``"energy"`` ranks moves by retained energy per parameter (a global greedy over singular values);
    ``"uniform"`` by the lowest rank ratio r/k, which is water-filling on one common ratio (what a
    bisection on the ratio finds), filled up to the budget. Callers check that the start fits.
    """
    priority: Priority = _energy_priority if strategy == "energy" else _uniform_priority
    if strategy == "energy" and any(layer.energy is None for layer in layers):
        raise ValueError("energy allocation needs each layer's singular values")
    ranks: dict[str, int | None] = {}
    spent = 0
    heap: list[tuple[float, int, int]] = []

    def push(i: int) -> None:
        layer, rank = layers[i], ranks[layers[i].name]
        if rank is None:
            return
        cost = layer.params(rank + 1 if rank < layer.break_even else None) - layer.params(rank)
        heapq.heappush(heap, (-priority(layer, rank, cost), i, cost))

    for layer in layers:
        start = min(min_rank, layer.max_rank)
        ranks[layer.name] = start if start <= layer.break_even else None
        spent += layer.params(ranks[layer.name])
    for i in range(len(layers)):
        push(i)
    while heap:
        _, i, cost = heapq.heappop(heap)
        if spent + cost > available:
            continue  # costs only grow as the budget shrinks: this layer is done
        layer = layers[i]
        rank = ranks[layer.name]
        assert rank is not None
        ranks[layer.name] = rank + 1 if rank < layer.break_even else None
        spent += cost
        push(i)
    return ranks


def minimum_params(layers: list[LayerCost], min_rank: int) -> int:
    """The smallest total these layers can reach (each at ``min_rank``, or dense if that saves nothing)."""
    total = 0
    for layer in layers:
        start = min(min_rank, layer.max_rank)
        total += layer.params(start) if start <= layer.break_even else layer.dense
    return total


def ranks_for_rank(layers: list[LayerCost], rank: int | float | str, min_rank: int) -> dict[str, int | None]:
    """A fixed rank (int), fraction of full rank (float) or ``"full"`` for every layer.

    Outside ``"full"`` a layer whose block would not save parameters stays dense.
    """
    out: dict[str, int | None] = {}
    for layer in layers:
        if rank == "full":
            out[layer.name] = layer.max_rank
            continue
        r = rank if isinstance(rank, int) else math.ceil(float(rank) * layer.max_rank)
        r = max(min(min_rank, layer.max_rank), min(r, layer.max_rank))
        out[layer.name] = r if layer.saves(r) else None
    return out


def ranks_for_energy(layers: list[LayerCost], energy: float, min_rank: int) -> dict[str, int | None]:
    """Per layer, the smallest rank retaining ``energy`` of its (whitened) spectral energy."""
    out: dict[str, int | None] = {}
    for layer in layers:
        assert layer.energy is not None
        cum = torch.cumsum(layer.energy, 0) / layer.energy.sum().clamp_min(1e-300)
        r = int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype)).item()) + 1
        r = max(min(min_rank, layer.max_rank), min(r, layer.max_rank))
        out[layer.name] = r if layer.saves(r) else None
    return out
