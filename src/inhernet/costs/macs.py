"""Multiply-accumulates (MACs) of one forward pass, counted by PyTorch's own FLOP counter.

``count_macs`` runs the model once under :class:`torch.utils.flop_counter.FlopCounterMode` and halves
its FLOP total (the counter charges 2 FLOPs per multiply-accumulate of matmul / linear / conv / bmm /
attention ops), so there are no hand-written per-layer formulas to drift from what PyTorch runs.

What the counter does and does not charge (and so what these numbers mean):

* counted: every matrix product and convolution, including the InherNet ``down`` and fused ``up``
  projections, the gate's ``Linear(r, h)`` and ``scaled_dot_product_attention``;
* **not** counted (0 MACs): embedding lookups (``nn.Embedding`` and an ``InherEmbedding``'s ``down``
  are gathers, not products), element-wise ops (activations, the gate's softmax and the ``g_i * z``
  scaling, norms, residual adds), pooling and reductions. These are memory-bound and usually small
  next to the products, but a model dominated by them will count low.

The counted MACs therefore compare the teacher with its inherited model on the work that scales with
rank and experts: ``r*n + h*r*m (+ h*r for the gate)`` per position for a Linear block against
``m*n`` for the teacher's layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..batches import forward_batch, move_batch
from ..kinds import LayerKind

__all__ = ["count_macs", "example_positions", "macs_by_module"]


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``example_inputs``.

    Args:
        model: any ``nn.Module``; it runs once in eval mode (its train/eval flags are restored after,
            so batch-norm statistics are not touched) and without gradients.
        example_inputs: one batch as accepted elsewhere in inhernet: a tensor, an ``(inputs, labels)``
            tuple, or a Hugging Face style dict (``labels`` is never passed to the model). MACs scale
            with its batch size (and sequence length).

    Returns:
        The FLOP counter's total divided by two. Embedding lookups and element-wise ops count 0; see
        the module docstring.
    """
    return _count(model, example_inputs)[0]


def macs_by_module(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """MACs of one forward pass per module, keyed by ``model.named_modules()`` names.

    ``""`` is the whole model (equal to :func:`count_macs`); a parent's count includes its children's.
    Only modules that ran at least one counted op appear. Same conventions as :func:`count_macs`.
    """
    return _count(model, example_inputs)[1]


def _count(model: nn.Module, example_inputs: Any) -> tuple[int, dict[str, int]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            forward_batch(model, example_inputs)
    finally:
        for m, training in modes.items():
            m.training = training
    total = counter.get_total_flops() // 2
    # The counter names the root by its class name and children by dotted paths below it
    # ("MnistCNN", "MnistCNN.fc_layers.0"); "Global" is everything, including ops outside modules.
    root = type(model).__name__
    per_module: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            continue
        if name == root:
            key = ""
        elif name.startswith(root + "."):
            key = name[len(root) + 1 :]
        else:
            key = name
        per_module[key] = per_module.get(key, 0) + sum(ops.values()) // 2
    per_module[""] = total
    return total, per_module


def example_positions(
    model: nn.Module, layers: dict[str, tuple[nn.Module, LayerKind]], example: Any
) -> tuple[int, dict[str, tuple[int, int]]]:
    """One forward pass on ``example``: the model's MACs, and per layer its output and gate positions.

    The MACs are :func:`inhernet.count_macs` of the whole batch; the positions (summed over a
    layer's calls; ``(0, 0)`` for a layer that did not run) are what :meth:`LayerKind.positions` reads
    from each output. Eval mode and no grad, as ``count_macs`` runs; the model's modes are restored.
    """
    seen = {name: (0, 0) for name in layers}

    def make_hook(name: str, kind: LayerKind):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor):
                rows, gates = kind.positions(module, output)
                seen[name] = (seen[name][0] + rows, seen[name][1] + gates)

        return hook

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    handles = [module.register_forward_hook(make_hook(name, kind)) for name, (module, kind) in layers.items()]
    try:
        total = count_macs(model, move_batch(example, device))
    finally:
        for h in handles:
            h.remove()
    return total, seen
