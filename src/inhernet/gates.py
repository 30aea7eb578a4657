"""Gated blocks and their gate logits over a calibration set (read by :func:`inhernet.merge_experts`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import nn

from .batches import forward_all, hooked
from .layers import InherBlock

__all__ = ["gated_blocks", "record_gates"]


def gated_blocks(model: nn.Module) -> dict[str, InherBlock]:
    """The blocks of ``model`` that have a gate (several experts), by module name."""
    return {n: b for n, b in model.named_modules() if isinstance(b, InherBlock) and b.gate is not None}


def record_gates(
    model: nn.Module, blocks: dict[str, InherBlock], calib: Iterable[Any],
    record: Callable[[str, torch.Tensor], None],
) -> dict[str, int]:
    """Run ``model`` over ``calib`` (eval mode, no grad), passing each gate call's logits (float64 rows
    ``(N, h)``) to ``record(name, logits)``; returns the rows seen per block.

    Raises:
        ValueError: ``calib`` produced no activation for some gate (empty, or the block is unused).
    """
    rows = dict.fromkeys(blocks, 0)

    def hook(name: str, _module: nn.Module, _inputs: Any, logits: torch.Tensor) -> None:
        logits = logits.detach().double().reshape(-1, logits.shape[-1])
        rows[name] += logits.shape[0]
        record(name, logits)

    with hooked([b.gate.register_forward_hook(partial(hook, n)) for n, b in blocks.items()]):  # type: ignore[union-attr]
        forward_all(model, calib)
    unseen = [n for n, count in rows.items() if count == 0]
    if unseen:
        raise ValueError(
            f"calib produced no gate activations for {', '.join(unseen[:5])}: calib is empty or these "
            "blocks are not used by the model's forward pass"
        )
    return rows
