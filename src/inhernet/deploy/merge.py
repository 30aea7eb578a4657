"""``merge_experts``: fold each block's gated experts into one up-projection (``B = sum_i E[g_i] B_i``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..gates import gated_blocks, record_gates
from ..layers import InherBlock

__all__ = ["gate_means", "merge_experts"]


def merge_experts(model: nn.Module, calib: Iterable[Any] | None = None) -> nn.Module:
    """Fold every gated block of ``model`` into a single-expert block, in place; returns ``model``.

    Args:
        model: a model holding InherNet blocks (the result of ``inherit``, possibly fine-tuned).
        calib: iterable of input batches on which each gate's mean probabilities are measured; may be
            omitted when every gate is input independent (zero weight, as right after ``inherit``).

    Returns:
        ``model``, whose blocks have ``experts == 1`` (new ``up`` parameters: build any optimizer after).
        Its plan and config record ``experts=1``; the plan's MAC total, which the merge changes, is dropped.

    Raises:
        ValueError: ``calib`` is missing while some gate depends on its input, or ``calib`` is empty.
    """
    gated = gated_blocks(model)
    if not gated:
        return model
    means = gate_means(model, calib, blocks=gated)
    _record_merge(model, {name: _merge_block(block, means[name]) for name, block in gated.items()})
    return model


def _record_merge(model: nn.Module, removed: dict[str, int]) -> None:
    """Make the plan and config of ``model`` say one expert, and the merged rows their new size."""
    plan = getattr(model, "inhernet_plan", None)
    if plan is not None:
        rows = [
            replace(row, experts=1, params_after=row.params_after - removed[row.name]) if row.name in removed else row
            for row in plan.layers
        ]
        model.inhernet_plan = replace(plan, config=replace(plan.config, experts=1), layers=rows, total_macs=None)
    config = getattr(model, "inhernet_config", None)
    if config is not None:
        model.inhernet_config = replace(config, experts=1)


def gate_means(
    model: nn.Module, calib: Iterable[Any] | None = None, *, blocks: dict[str, InherBlock] | None = None
) -> dict[str, torch.Tensor]:
    """Mean gate probabilities (float64, length h) of every gated block, by module name; without ``calib``
    every gate must be input independent, and gives ``gate_probs(bias)``."""
    blocks = gated_blocks(model) if blocks is None else blocks
    if calib is None:
        dependent = [
            n for n, b in blocks.items()
            if bool(b.gate.weight.detach().ne(0).any()) and not _experts_equal(b)  # type: ignore[union-attr]
        ]
        if dependent:
            listed = ", ".join(dependent[:5]) + (", ..." if len(dependent) > 5 else "")
            raise ValueError(
                f"merge_experts needs calib: the gates of {listed} depend on their input (non-zero weight), "
                "so their mean probabilities must be measured; pass calib=<iterable of input batches>"
            )
        return {n: b.gate_probs(b.gate.bias.detach().double()) for n, b in blocks.items()}  # type: ignore[union-attr]

    sums = {n: torch.zeros(b.experts, dtype=torch.float64) for n, b in blocks.items()}

    def record(name: str, logits: torch.Tensor) -> None:
        sums[name] += blocks[name].gate_probs(logits).sum(0).cpu()

    rows = record_gates(model, blocks, calib, record)
    return {n: sums[n] / rows[n] for n in blocks}


def _experts_equal(block: InherBlock) -> bool:
    """All experts identical (e.g. ``expert_noise=0`` at init): any gate folds them exactly."""
    e = block.expert_weights()
    return bool(torch.equal(e, e[:1].expand_as(e)))


@torch.no_grad()
def _merge_block(block: InherBlock, p: torch.Tensor) -> int:
    """Fold ``block``'s experts by the gate means ``p``; returns the number of parameters removed."""
    before = sum(t.numel() for t in block.parameters())
    experts = block.expert_weights().double()  # (h, m, r)
    merged = torch.einsum("h,hmr->mr", p.to(experts), experts)
    old = block.up  # a Linear or a 1x1 conv
    w, m = old.weight, old.weight.shape[0]
    opts: dict[str, Any] = {"bias": old.bias is not None, "device": w.device, "dtype": w.dtype}
    kernel = () if isinstance(old, nn.Linear) else (1,)
    new = type(old)(block.rank, m, *kernel, **opts)
    new.weight.copy_(merged.reshape(new.weight.shape).to(w.dtype))
    new.weight.requires_grad_(w.requires_grad)
    if old.bias is not None:
        new.bias.copy_(old.bias)
        new.bias.requires_grad_(old.bias.requires_grad)
    new.train(old.training)
    block.up = new
    block.gate = None
    block.experts = 1
    return before - sum(t.numel() for t in block.parameters())
