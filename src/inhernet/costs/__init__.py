"""What a layer and a model cost in parameters, MACs (``macs``) or measured time (``table``): a layer's
price (``prices``), and the teacher's costs on the example input (``profile``)."""

from .macs import count_macs
from .prices import NANOSECONDS, RANK_MULTIPLE, LayerCost, Price, round_rank
from .table import Costs, CostTable, LatencyCosts, LayerShape, measure_latency, time_calls

__all__ = [
    "NANOSECONDS", "RANK_MULTIPLE", "CostTable", "Costs", "LatencyCosts", "LayerCost", "LayerShape", "Price",
    "count_macs", "measure_latency", "round_rank", "time_calls",
]
