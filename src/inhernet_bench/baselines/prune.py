"""prune-kd: the teacher pruned structurally with Torch-Pruning to (at least) a target size.

The Torch-Pruning call itself (:func:`inhernet.pruning.prune`: whole channels and, for BERT-style
attention, whole heads; the output layer kept; causal LMs refused) is shared with the hybrid
``InherConfig(prune=...)``. Here the pruning ratio is found by bisection: the pruned copy is the
smallest one at least as large as the target (parameters or MACs). A causal LM is pruned instead by
:mod:`inhernet_bench.baselines.llm_prune` (its FFN channels only, the tied embeddings untouched).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from inhernet.families import model_family
from inhernet.pruning import IMPORTANCES, attention_heads, output_layers, prune
from inhernet_bench.baselines.llm_prune import prune_llm_to_size

__all__ = ["IMPORTANCES", "attention_heads", "default_importance", "output_layers", "prune", "prune_to_size"]


def default_importance(model: nn.Module) -> str:
    """The channel importance ``prune-kd`` uses on ``model`` unless told: ``"taylor"`` for causal LMs, ``"l2"``
    otherwise.

    Measured on SmolLM2-135M at 80% of the parameters: L2 magnitude leaves a zero-shot perplexity of
    ~400,000, Taylor ~130 (the FFN rows of largest norm are not the ones the loss needs); on the CNNs and
    BERT, L2 needs no data and matched Taylor.
    """
    return "taylor" if model_family(model) == "causal-lm" else "l2"


def prune_to_size(
    model: nn.Module,
    example: Any,
    target: int,
    size: Callable[[nn.Module], int],
    *,
    tolerance: float = 0.01,
    max_iter: int = 16,
    **options: Any,
) -> nn.Module:
    """The pruned copy of ``model`` (see :func:`prune`) of the smallest ``size`` that is still >= ``target``.

    The pruning ratio is bisected until the size is within ``tolerance`` of ``target`` or ``max_iter``
    trials have run; channels are whole, so the size moves in steps. A causal LM goes to
    :func:`~inhernet_bench.baselines.llm_prune.prune_llm_to_size` (FFN channels, ``options`` passed on).

    Raises:
        ValueError: if ``model`` itself is smaller than ``target``, or it cannot be pruned.
    """
    if model_family(model) == "causal-lm":
        return prune_llm_to_size(model, example, target, size, tolerance=tolerance, **options)
    full = size(model)
    if full < target:
        raise ValueError(f"the teacher's size {full:,} is already below the target {target:,}: nothing to prune")
    lo, hi = 0.0, options.get("max_ratio", 0.95) - 1e-6
    best, best_size, below = copy.deepcopy(model), full, False
    for _ in range(max_iter):
        if best_size <= target * (1 + tolerance):
            break
        mid = (lo + hi) / 2
        pruned = prune(model, example, mid, **options)
        n = size(pruned)
        if n >= target:
            lo, best, best_size = mid, pruned, n
        else:
            hi, below = mid, True
    if not below and best_size > target * (1 + 10 * tolerance):
        raise ValueError(
            f"pruning {type(model).__name__} with ratios up to {lo:.2f} still leaves {best_size:,}, far above "
            f"the target {target:,}: give a larger budget or a larger max_ratio"
        )
    return best
