"""Gate diagnostics: do the experts of an InherNet model route anything, and how far apart are they?

``gate_stats`` runs the model over calibration batches with a hook on every gate and reports, per
gated block:

* ``entropy``: the mean entropy of the gate's softmax over every token / sample / position, divided
  by ``log h`` (1 = uniform, the gate routes nothing; 0 = one expert per input);
* ``load``: the mean routing weights (``gate_probs``: softmax, or one-hot for top-1), whose entropy
  says whether the inputs use every expert (``load_entropy``, normalised the same way);
* ``spread``: :func:`inhernet.expert_spread`, the experts' mean distance from their mean relative
  to the mean's norm (0 = one expert that costs h).

``summarize_gates`` averages them over blocks. A model whose gates have entropy ~1 and whose
experts have a small spread computes the mean expert: :func:`inhernet.merge_experts` then folds it
into one expert at no loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .batches import forward_all
from .layers import InherBlock, expert_spread

__all__ = ["gate_stats", "summarize_gates"]


def gate_stats(model: nn.Module, calib: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Per gated block (by module name): ``entropy``, ``load``, ``load_entropy``, ``spread``, ``routing``.

    Args:
        model: a model holding InherNet blocks; blocks with one expert (no gate) are skipped.
        calib: input batches (tensors, ``(inputs, labels)`` tuples or dicts), run in eval mode without
            gradient; the model's modes are restored afterwards.

    Raises:
        ValueError: ``calib`` produced no activation for some gate (empty, or the block is unused).
    """
    blocks = {n: b for n, b in model.named_modules() if isinstance(b, InherBlock) and b.gate is not None}
    if not blocks:
        return {}
    sums = {n: {"entropy": 0.0, "load": torch.zeros(b.experts, dtype=torch.float64), "count": 0}
            for n, b in blocks.items()}

    def hook(name: str, block: InherBlock):
        def _record(_module: nn.Module, _inputs: Any, logits: torch.Tensor) -> None:
            logits = logits.detach().double().reshape(-1, logits.shape[-1])
            p = torch.softmax(logits, dim=-1)
            entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
            s = sums[name]
            s["entropy"] += float(entropy.sum())
            s["load"] += block.gate_probs(logits).sum(0).cpu()
            s["count"] += logits.shape[0]

        return _record

    handles = [b.gate.register_forward_hook(hook(n, b)) for n, b in blocks.items()]  # type: ignore[union-attr]
    try:
        forward_all(model, calib)
    finally:
        for h in handles:
            h.remove()
    unseen = [n for n, s in sums.items() if s["count"] == 0]
    if unseen:
        raise ValueError(
            f"calib produced no gate activations for {', '.join(unseen[:5])}: calib is empty or these "
            "blocks are not used by the model's forward pass"
        )
    out = {}
    for name, block in blocks.items():
        s, log_h = sums[name], math.log(block.experts)
        load = s["load"] / s["count"]
        load_entropy = float(-(load * torch.log(load.clamp_min(1e-300))).sum()) / log_h
        out[name] = {
            "entropy": s["entropy"] / s["count"] / log_h,
            "load": [round(float(v), 4) for v in load],
            "load_entropy": load_entropy,
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
