"""The methods a benchmark compares, each building a student of (at least) the same size."""

from ..stack import layer_stack
from .layerdrop import drop_layers, spread_layers
from .methods import DEFAULT_METHODS, METHODS, MethodContext, build_student, register_method
from .prune import prune, prune_to_size
from .students import llama_student, width_scaled

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "MethodContext",
    "build_student",
    "drop_layers",
    "layer_stack",
    "llama_student",
    "prune",
    "prune_to_size",
    "register_method",
    "spread_layers",
    "width_scaled",
]
