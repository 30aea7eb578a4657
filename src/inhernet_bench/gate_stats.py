"""Gate diagnostics for the experts study: do the experts of an InherNet model route anything, and how far
apart are they?

Per gated block: ``entropy``, the gate softmax's mean entropy over ``log h`` (1: it routes nothing);
``load``, the mean routing weights, and ``load_entropy``, theirs; ``spread``, :func:`inhernet.expert_spread`.
Entropy ~1 over experts of small spread: :func:`inhernet.merge_experts` folds them at no loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from inhernet.gates import gated_blocks, record_gates
from inhernet.layers import expert_spread

__all__ = ["gate_stats", "summarize_gates"]


def gate_stats(model: nn.Module, calib: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Per gated block (by module name): ``entropy``, ``load``, ``load_entropy`` and ``spread``.

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
        load[name] += p.sum(0).cpu()

    rows = record_gates(model, blocks, calib, record) if blocks else {}
    out = {}
    for name, block in blocks.items():
        log_h, mean_load = math.log(block.experts), load[name] / rows[name]
        out[name] = {
            "entropy": entropy[name] / rows[name] / log_h,
            "load": [round(float(v), 4) for v in mean_load],
            "load_entropy": float(-(mean_load * torch.log(mean_load.clamp_min(1e-300))).sum()) / log_h,
            "spread": expert_spread(block),
        }
    return out


def summarize_gates(stats: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Means over blocks of ``entropy``, ``load_entropy`` and ``spread`` (empty without gates)."""
    if not stats:
        return {}
    keys = ("entropy", "load_entropy", "spread")
    return {k: sum(s[k] for s in stats.values()) / len(stats) for k in keys}
