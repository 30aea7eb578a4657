"""The methods a benchmark compares, each building a student of (at least) the same size."""

from inhernet.stack import layer_stack
from inhernet_bench.baselines.layerdrop import block_influence, drop_layers, spread_layers
from inhernet_bench.baselines.llm_prune import prune_llm, prune_llm_to_size
from inhernet_bench.baselines.methods import (
    DEFAULT_METHODS,
    METHODS,
    MethodContext,
    build_student,
    register_method,
)
from inhernet_bench.baselines.prune import prune, prune_to_size
from inhernet_bench.baselines.students import llama_student, width_scaled

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "MethodContext",
    "block_influence",
    "build_student",
    "drop_layers",
    "layer_stack",
    "llama_student",
    "prune",
    "prune_llm",
    "prune_llm_to_size",
    "prune_to_size",
    "register_method",
    "spread_layers",
    "width_scaled",
]
