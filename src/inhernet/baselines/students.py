"""Conventional smaller students: the teacher's architecture family at a reduced width or depth."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["llama_student", "width_scaled"]


def width_scaled(build: Callable[[float], nn.Module], min_params: int, *, steps: int = 400) -> nn.Module:
    """The narrowest ``build(scale)`` with at least ``min_params`` parameters, for scale in (0, 1].

    ``build`` maps a width multiplier to a freshly initialised model; the search scans the multiplier
    on a fine grid (parameter counts are not exactly monotone once widths are rounded).
    """
    best: tuple[int, nn.Module] | None = None
    for i in range(1, steps + 1):
        model = build(i / steps)
        n = sum(p.numel() for p in model.parameters())
        if n >= min_params and (best is None or n < best[0]):
            best = (n, model)
            if n <= min_params * 1.002:
                break
    if best is None:
        raise ValueError(f"no width multiplier in (0, 1] reaches {min_params:,} parameters")
    return best[1]


def llama_student(config: Any, min_params: int) -> nn.Module:
    """A shallower, randomly initialised ``LlamaForCausalLM`` with at least ``min_params`` parameters.

    ``config`` is the teacher's (Hugging Face) ``LlamaConfig``. The student keeps the teacher's width,
    heads, vocabulary and tied embeddings, and takes the fewest decoder layers that reach
    ``min_params``: the conventional way to shrink a narrow-deep model such as SmolLM2 (narrowing it
    would also shrink the tied vocabulary embedding, which holds a fifth of its parameters). The size is
    affine in the layer count, so two models on the meta device (1 and 2 layers) price every depth.
    """
    import torch
    from transformers import AutoModelForCausalLM

    def with_layers(layers: int) -> Any:
        candidate = copy.deepcopy(config)
        candidate.num_hidden_layers = layers
        if isinstance(getattr(candidate, "layer_types", None), list):
            candidate.layer_types = candidate.layer_types[:layers]
        return candidate

    def size(layers: int) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModelForCausalLM.from_config(with_layers(layers)).parameters())

    teacher_layers = int(config.num_hidden_layers)
    one, two = size(1), size(2)
    per_layer, base = two - one, 2 * one - two
    layers = max(1, -(-(min_params - base) // per_layer))
    if layers > teacher_layers:
        raise ValueError(
            f"even all {teacher_layers} layers of {type(config).__name__} stay below {min_params:,} parameters; "
            "give a smaller min_params"
        )
    return AutoModelForCausalLM.from_config(with_layers(layers), dtype=torch.float32)
