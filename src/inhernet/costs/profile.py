"""The teacher's costs on the example input, as a MAC (:class:`MacProfile`) or latency
(:class:`LatencyProfile`) budget prices its layers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..batches import device_of
from ..calibration import split_example
from ..config import InherConfig
from ..kinds import LayerKind
from .macs import example_pass
from .prices import NANOSECONDS, Price, latency_price
from .table import CostTable, LatencyCosts, rank_points

__all__ = ["LatencyProfile", "MacProfile", "Profile", "latency_table", "measured_ns", "profile_for"]


@dataclass
class MacProfile:
    """The teacher's MACs on the example input, and per open layer its (output, gate) positions there."""

    total: int
    positions: dict[str, tuple[int, int]]


#: the layers a profile prices: ``{name: (module, kind)}`` (:attr:`inhernet.discovery.Found.open`)
Layers = dict[str, tuple[nn.Module, LayerKind]]


@dataclass
class LatencyProfile:
    """The teacher's measured time on the example input and each open layer's price, in nanoseconds.

    ``total``: the teacher's forward pass, measured whole; ``prices``: per factorisable layer that ran
    on the example, its dense time and fitted factorised price summed over its calls
    (:func:`inhernet.costs.prices.latency_price`). ``base``: what a ``latency=`` fraction refers to when
    not ``total``: the *original* teacher's time when this model is a pruned copy of it.
    """

    total: int
    prices: dict[str, Price]
    base: int | None = None

    @property
    def reference(self) -> int:
        """What the budget's fraction is taken of: :attr:`base`, else :attr:`total`."""
        return self.total if self.base is None else self.base

    def price(self, name: str) -> Price:
        """``name``'s price; a layer that did not run costs nothing (and saves nothing)."""
        return self.prices.get(name, Price(0, 0, 0))

    def fixed(self) -> int:
        """What the allocation cannot change: the measured total minus the layers' dense times, >= 0."""
        return max(0, self.total - sum(p.dense for p in self.prices.values()))


def latency_table(model: nn.Module, costs: LatencyCosts | None) -> LatencyCosts:
    """The cost table a latency budget is priced by: ``costs``, checked, or a cached ``CostTable``."""
    if costs is not None and not isinstance(costs, LatencyCosts):
        raise TypeError(
            "costs must have dense(shape), factorised(shape, rank) and latency(models, example) methods "
            f"(e.g. an inhernet.CostTable), got {type(costs).__name__}"
        )
    return costs if costs is not None else CostTable(device_of(model))


def measured_ns(table: LatencyCosts, model: nn.Module, example: Any) -> int:
    """``model``'s forward pass on the batch ``example``, whole, as ``table`` measures it, in integer ns."""
    return round(float(table.latency([model], example)[0]) * NANOSECONDS)


#: what prices the layers outside parameters: MACs or measured time on the example input
Profile = MacProfile | LatencyProfile


def profile_for(
    model: nn.Module, config: InherConfig, todo: Layers, calib: Iterable[Any] | None,
    costs: LatencyCosts | None = None, latency_base: int | None = None,
) -> tuple[Profile | None, Iterable[Any] | None]:
    """The profile a MAC or latency budget prices the layers by (``None`` for the others), from one pass on
    the first batch of ``calib``, and ``calib`` to iterate in full afterwards. A latency profile times the
    teacher and prices its open layers by :func:`latency_table`; ``latency_base``: see
    :attr:`LatencyProfile.base`."""
    kind = config.target.kind
    if kind not in ("macs", "latency"):
        return None, calib
    if kind == "latency" and calib is None:
        raise ValueError("latency= needs calib: its first batch is the example input")
    table = latency_table(model, costs) if kind == "latency" else None
    timed = {} if table is None else {
        name: rank_points(min(k.shape(module)), getattr(table, "points", 4)) for name, (module, k) in todo.items()}
    example, calib = split_example(calib, "a MAC budget (macs=)")  # latency= without calib is refused above
    total, positions, shapes = example_pass(model, todo, example)
    if table is None:
        return MacProfile(total, positions), calib
    prices = {}
    for name, calls in shapes.items():
        dense = sum(float(table.dense(s)) for s in calls)
        points = [(r, sum(float(table.factorised(s, r)) for s in calls)) for r in timed[name]]
        prices[name] = latency_price(dense, points)
    return LatencyProfile(measured_ns(table, model, example), prices, latency_base), calib
