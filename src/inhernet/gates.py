"""Gate diagnostics: do the experts of an InherNet model route anything, and how far apart are they?

Per gated block: ``entropy``, the gate softmax's mean entropy over ``log h`` (1: it routes nothing);
``load``, the mean routing weights, and ``load_entropy``, theirs; ``spread``, :func:`inhernet.expert_spread`.
Entropy ~1 over experts of small spread: :func:`inhernet.merge_experts` folds them at no loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import nn

from .batches import forward_all
from .layers import InherBlock, expert_spread

__all__ = ["gate_stats", "gated_blocks", "record_gates", "summarize_gates"]


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

    handles = [
        b.gate.register_forward_hook(partial(hook, n)) for n, b in blocks.items()  # type: ignore[union-attr]
    ]
    try:
        forward_all(model, calib)
    finally:
        for h in handles:
            h.remove()
    unseen = [n for n, count in rows.items() if count == 0]
    if unseen:
        raise ValueError(
            f"calib produced no gate activations for {', '.join(unseen[:5])}: calib is empty or these "
            "blocks are not used by the model's forward pass"
        )
    return rows


def gate_stats(model: nn.Module, calib: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Per gated block (by module name): ``entropy``, ``load``, ``load_entropy``, ``spread``, ``routing``.

    Args:
        model: a model holding InherNet blocks; blocks with one expert (no gate) are skipped.
        calib: input batches, run as :func:`record_gates` runs them (which raises as it says).
    """
    blocks = gated_blocks(model)
    entropy = dict.fromkeys(blocks, 0.0)
    load = {n: torch.zeros(b.experts, dtype=torch.float64) for n, b in blocks.items()}

    def record(name: str, logits: torch.Tensor) -> None:
        p = torch.softmax(logits, dim=-1)
        entropy[name] += float(-(p * torch.log(p.clamp_min(1e-300))).sum())
        load[name] += blocks[name].gate_probs(logits).sum(0).cpu()

    rows = record_gates(model, blocks, calib, record) if blocks else {}
    out = {}
    for name, block in blocks.items():
        log_h, mean_load = math.log(block.experts), load[name] / rows[name]
        out[name] = {
            "entropy": entropy[name] / rows[name] / log_h,
            "load": [round(float(v), 4) for v in mean_load],
            "load_entropy": float(-(mean_load * torch.log(mean_load.clamp_min(1e-300))).sum()) / log_h,
            "spread": expert_spread(block),
            "routing": block.routing,
            "gate_pool": block.gate_pool,
        }
    return out


def summarize_gates(stats: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Means over blocks of ``entropy``, ``load_entropy`` and ``spread`` (empty without gates)."""
    if not stats:
        return {}
    keys = ("entropy", "load_entropy", "spread")
    return {k: sum(s[k] for s in stats.values()) / len(stats) for k in keys}
