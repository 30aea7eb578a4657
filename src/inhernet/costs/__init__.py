"""Costs beneath the core: what a layer and a model cost in parameters, MACs or measured time.

``prices`` (a layer's :class:`Price` and the allocator's :class:`LayerCost`), ``macs`` (PyTorch's FLOP
counter), ``table`` (measured layer times, cached per device) and ``profile`` (the teacher's costs on the
example input, as a MAC or latency budget prices its layers).
"""

from .macs import count_macs
from .prices import NANOSECONDS, RANK_MULTIPLE, LayerCost, Price, round_rank
from .table import Costs, CostTable, LatencyCosts, LayerShape, measure_latency, time_calls

__all__ = [
    "NANOSECONDS", "RANK_MULTIPLE", "CostTable", "Costs", "LatencyCosts", "LayerCost", "LayerShape", "Price",
    "count_macs", "measure_latency", "round_rank", "time_calls",
]
