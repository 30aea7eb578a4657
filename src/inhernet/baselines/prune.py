"""prune-kd: the teacher pruned structurally with Torch-Pruning to (at least) a target size.

Torch-Pruning's dependency graph removes whole channels (conv filters, linear units, the hidden width
of a transformer together with its embeddings and LayerNorms) and, for Hugging Face BERT-style
attention, whole heads, so the pruned model is a smaller dense model of the teacher's architecture.
The output layer is never pruned (its width is the number of classes). The pruning ratio is found by
bisection: the pruned copy is the smallest one at least as large as the target (parameters or MACs).

Causal language models with tied input/output embeddings are refused: pruning the hidden width would
cut the embedding matrix that the output layer shares.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..batches import forward_batch, logits_of
from ..families import model_family

__all__ = ["IMPORTANCES", "attention_heads", "output_layers", "prune", "prune_to_size"]

#: channel importance criteria: global L2 magnitude (no data needed) or first-order Taylor (needs a
#: calibration batch: the loss is the cross-entropy against the model's own predictions)
IMPORTANCES = ("l2", "taylor")


def _check_prunable(model: nn.Module) -> None:
    if model_family(model) == "causal-lm":
        raise ValueError(
            f"prune-kd cannot prune {type(model).__name__}: a causal LM ties its output layer to the input "
            "embeddings, which pruning the hidden width would cut; compare it with layerdrop-kd instead"
        )


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """``{projection: number of heads}`` for every BERT-style attention (``query``/``key``/``value``
    linears beside ``num_attention_heads``), as Torch-Pruning's ``num_heads`` expects."""
    heads: dict[nn.Module, int] = {}
    for module in model.modules():
        n = getattr(module, "num_attention_heads", None)
        projections = [getattr(module, k, None) for k in ("query", "key", "value")]
        if isinstance(n, int) and all(isinstance(p, nn.Linear) for p in projections):
            heads.update(dict.fromkeys(projections, n))
    return heads


def output_layers(model: nn.Module, example: Any) -> list[nn.Module]:
    """The weight layer whose output is the model's output (the classifier): the last one to run."""
    ran: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: ran.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding))
    ]
    try:
        with torch.no_grad():
            forward_batch(model, example)
    finally:
        for h in hooks:
            h.remove()
    if not ran:
        raise ValueError(
            f"{type(model).__name__} ran no Linear, Conv or Embedding layer on the example: nothing to prune"
        )
    return [ran[-1]]


def prune(
    model: nn.Module,
    example: Any,
    ratio: float,
    *,
    importance: str = "l2",
    ignored: Sequence[nn.Module] = (),
    global_pruning: bool | None = None,
    max_ratio: float = 0.95,
) -> nn.Module:
    """A deep copy of ``model`` with a share ``ratio`` in [0, 1) of its channels (and heads) removed.

    Args:
        model: the teacher; not modified.
        example: one input batch (a tensor, an ``(inputs, labels)`` tuple or a dict), used to trace the
            dependency graph and, with ``importance="taylor"``, for the gradients.
        ratio: the pruning ratio (the share of channels removed, per layer or globally).
        importance: ``"l2"`` (magnitude) or ``"taylor"``.
        ignored: modules of ``model`` to keep whole, besides the output layer.
        global_pruning: rank channels across layers (``True``) or prune every layer by ``ratio``
            (``False``); ``None``: globally, except for transformers (models with attention heads).
        max_ratio: no layer loses more than this share of its channels.
    """
    import torch_pruning as tp

    _check_prunable(model)
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be a fraction in [0, 1), got {ratio!r}")
    index = {id(m): name for name, m in model.named_modules()}
    names = [index[id(m)] for m in ignored if id(m) in index]
    student = copy.deepcopy(model).eval()
    keep = [*output_layers(student, example), *(student.get_submodule(n) for n in names)]
    heads = attention_heads(student)
    if global_pruning is None:
        # Ranked globally, the hidden width's channels (which carry the embeddings) never lose to FFN
        # channels and the width is never cut: a transformer is pruned layer by layer.
        global_pruning = not heads
    # at least one head per attention is kept
    head_ratio = min(ratio, *((n - 1) / n for n in heads.values())) if heads else 0.0
    imp = tp.importance.GroupMagnitudeImportance(p=2) if importance == "l2" else tp.importance.GroupTaylorImportance()
    with torch.enable_grad():
        pruner = tp.pruner.BasePruner(
            student, example, importance=imp, global_pruning=global_pruning, pruning_ratio=ratio,
            max_pruning_ratio=max_ratio, ignored_layers=keep, num_heads=heads, prune_num_heads=bool(heads),
            prune_head_dims=not heads, head_pruning_ratio=head_ratio,
            forward_fn=forward_batch, output_transform=logits_of,
        )
        if importance == "taylor":
            student.zero_grad()
            logits = logits_of(forward_batch(student, example))
            flat = logits.reshape(-1, logits.shape[-1])
            nn.functional.cross_entropy(flat, flat.detach().argmax(-1)).backward()
        pruner.step()
    student.zero_grad(set_to_none=True)
    _sync_attention(student, heads)
    return student.eval()


def _sync_attention(model: nn.Module, heads: dict[nn.Module, int]) -> None:
    """After head pruning: each attention's head count and width, from its query's width (whole heads
    are removed, so the head size is unchanged)."""
    for module in model.modules():
        query = getattr(module, "query", None)
        if query in heads and isinstance(getattr(module, "attention_head_size", None), int):
            module.num_attention_heads = query.out_features // module.attention_head_size
            if hasattr(module, "all_head_size"):
                module.all_head_size = query.out_features


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
    trials have run; channels are whole, so the size moves in steps.

    Raises:
        ValueError: if ``model`` itself is smaller than ``target``, or it cannot be pruned.
    """
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
