"""Multiply-accumulates (MACs) of one forward pass, counted by PyTorch's own FLOP counter.

``count_macs`` halves the FLOP total of :class:`torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per
multiply-accumulate), so no hand-written per-layer formula can drift from what PyTorch runs. Counted:
every matrix product and convolution (a block's ``down``, fused ``up`` and gate ``Linear(r, h)``
included) and ``scaled_dot_product_attention``. Not counted (0 MACs): embedding lookups (an
``InherEmbedding``'s ``down`` too), element-wise ops (activations, the gate's softmax and scaling,
norms, residual adds), pooling and reductions: memory-bound work, usually small next to the products.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..batches import device_of, evaluating, forward_batch, hooked, move_batch
from ..kinds import LayerKind
from .table import LayerShape

__all__ = ["count_macs", "example_pass"]


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``example_inputs``.

    Args:
        model: any ``nn.Module``; it runs once in eval mode (its flags restored after) without gradients.
        example_inputs: one batch: a tensor, an ``(inputs, labels)`` tuple, or a Hugging Face style dict
            (``labels`` is not passed), moved to the model's device. MACs scale with its batch size (and
            sequence length).

    Returns:
        The FLOP counter's total divided by two (see the module docstring for what it counts).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    counter = FlopCounterMode(display=False)
    with evaluating(model), torch.no_grad(), counter:
        forward_batch(model, move_batch(example_inputs, device_of(model)))
    return counter.get_total_flops() // 2


def example_pass(
    model: nn.Module, layers: dict[str, tuple[nn.Module, LayerKind]], example: Any
) -> tuple[int, dict[str, tuple[int, int]], dict[str, list[LayerShape]]]:
    """One forward pass on ``example``: the model's MACs; per layer its output and gate positions
    (:meth:`LayerKind.positions`) summed over its calls (``(0, 0)`` for a layer that did not run); and per
    layer that ran, the :class:`~inhernet.costs.table.LayerShape` of each call, in order."""
    seen = {name: (0, 0) for name in layers}
    shapes: dict[str, list[LayerShape]] = {}

    def hook(name: str, kind: LayerKind, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if args and isinstance(args[0], torch.Tensor):
            shapes.setdefault(name, []).append(LayerShape.of_layer(module, args[0]))
        if isinstance(output, torch.Tensor):
            rows, gates = kind.positions(module, output)
            seen[name] = (seen[name][0] + rows, seen[name][1] + gates)

    with hooked([module.register_forward_hook(partial(hook, n, kind)) for n, (module, kind) in layers.items()]):
        total = count_macs(model, example)
    return total, seen, shapes
