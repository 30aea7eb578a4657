"""What a layer costs: a :class:`Price` in one currency (parameters, MACs or measured nanoseconds) and
the allocator's view of a factorisable layer (:class:`LayerCost`), which :mod:`inhernet.allocation` spends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..kinds import block_params

__all__ = [
    "NANOSECONDS", "RANK_MULTIPLE", "LayerCost", "Price", "floor_rank", "latency_price", "mac_price", "param_price",
    "round_rank",
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
        unit = 1.0
        base = float(ns.mean()) - ranks[0]
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
