"""DistilBERT-style layer dropping: a copy of a transformer that keeps every other layer of its stack."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from ..stack import layer_stack

__all__ = ["drop_layers", "layer_stack", "spread_layers"]


def drop_layers(model: nn.Module, keep: slice | Sequence[int] = slice(0, None, 2)) -> nn.Module:
    """A deep copy of ``model`` whose layer stack keeps only the layers ``keep`` selects, in order.

    ``keep`` is a slice (default: every other layer, from the first) or a list of layer indices.

    Hugging Face bookkeeping follows: ``config.num_hidden_layers`` (and ``config.layer_types``) shrink and
    each kept block's ``layer_idx`` (its key in the KV cache) is renumbered.
    """
    student = copy.deepcopy(model)
    name, stack = layer_stack(student)
    indices = list(range(len(stack)))[keep] if isinstance(keep, slice) else sorted(set(keep))
    if any(not 0 <= i < len(stack) for i in indices):
        raise ValueError(f"keep={keep} names layers outside 0..{len(stack) - 1} of {name!r}")
    if not indices:
        raise ValueError(f"keep={keep} leaves none of the {len(stack)} layers of {name!r}")
    kept = nn.ModuleList(stack[i] for i in indices)
    parent_name, _, attr = name.rpartition(".")
    setattr(student.get_submodule(parent_name), attr, kept)
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    config = getattr(student, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(kept)
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == len(stack):
            config.layer_types = [layer_types[i] for i in indices]
    return student


def spread_layers(n: int, k: int) -> list[int]:
    """``k`` of ``n`` layer indices spread evenly, first and last included (every other one when ``k = n/2``)."""
    if not 1 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} layers")
    if 2 * k == n:
        return list(range(0, n, 2))
    return [0] if k == 1 else sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
