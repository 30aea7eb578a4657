"""prune-kd for causal LMs: whole FFN channels removed from every gated (Llama-style) MLP.

Torch-Pruning cannot prune a causal LM consistently (:func:`inhernet.pruning.check_prunable`): its
dependency graph cuts the hidden width, and with it the input embeddings the output layer is tied to.
Here only the MLPs' intermediate units are removed: channel ``j`` of a layer is row ``j`` of
``gate_proj`` and ``up_proj`` and column ``j`` of ``down_proj``, so the hidden width, the embeddings
(and their tie to the LM head), the norms and the attention stay as they are. Attention heads are kept
whole: with grouped-query attention a head can only go with its whole key/value group (a third of a
SmolLM2 layer's attention at once) and the FFN holds most of a block's weights (three quarters of
SmolLM2's).

Channels are ranked by ``importance``, the same criteria as Torch-Pruning's (:data:`IMPORTANCES`):

* ``"l2"``: the group's squared L2 magnitude (gate row + up row + down column), no data needed;
* ``"taylor"``: first-order Taylor, ``sum |w * dL/dw|`` over the group, with ``L`` the cross-entropy of
  the model against its own predictions on the example batch.

Magnitude ignores how large each channel's inputs are (the RMSNorm gains, outlier features): on
SmolLM2-135M pruned to 80% of its parameters (a third of every FFN), zero-shot perplexity on 1k held-out
BBC tokens is ~400,000 with ``"l2"`` and 133 with ``"taylor"`` (the teacher: 45); prefer ``"taylor"``.

``global_pruning=False`` (the default, as LLM-Pruner and :func:`inhernet.pruning.prune` for transformers)
removes the same number of channels from every layer; ``True`` ranks all channels together, each
layer's scores divided by their mean (layers differ in scale), so layers lose different shares (Taylor,
same model and size: perplexity 113 against 133 uniformly, the last layer cut hardest). No layer loses
more than ``max_ratio`` of its channels.

A uniformly pruned model has ``config.intermediate_size`` set to its new width (a ``transformers``
``save_pretrained`` / ``from_pretrained`` round trip rebuilds it); after global pruning the widths differ
by layer and the config keeps the teacher's (Hugging Face Llama configs hold one width). ``inhernet.save``
stores inherited models only and refuses a pruned one, as it refuses any model without InherNet blocks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from inhernet.batches import forward_batch, logits_of
from inhernet.pruning import IMPORTANCES

__all__ = ["channel_importance", "gated_mlps", "prune_ffn", "prune_llm", "prune_llm_to_size"]


def gated_mlps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, mlp)`` of every gated MLP (``gate_proj``, ``up_proj``, ``down_proj`` linears), in order.

    Raises:
        ValueError: the model has none (it is not a Llama-style transformer).
    """
    found = [
        (name, m) for name, m in model.named_modules()
        if all(isinstance(getattr(m, k, None), nn.Linear) for k in ("gate_proj", "up_proj", "down_proj"))
    ]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no gated MLP (gate_proj/up_proj/down_proj linears): prune-kd prunes the "
            "FFN channels of Llama-style causal LMs (Llama, Mistral, Qwen2, SmolLM2...)"
        )
    for name, m in found:
        width = m.gate_proj.out_features
        if m.up_proj.out_features != width or m.down_proj.in_features != width:
            raise ValueError(
                f"{name}: gate_proj ({m.gate_proj.out_features}), up_proj ({m.up_proj.out_features}) and down_proj "
                f"({m.down_proj.in_features}) disagree on the intermediate width"
            )
    return found


def _check_importance(importance: str) -> None:
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")


def channel_importance(model: nn.Module, example: Any = None, importance: str = "l2") -> list[torch.Tensor]:
    """Per gated MLP (:func:`gated_mlps`), one score per intermediate channel (float64, on the CPU).

    ``example`` (one input batch) is needed for ``importance="taylor"``; ``model`` is not changed (no
    ``.grad`` is left on it).
    """
    _check_importance(importance)
    mlps = [m for _, m in gated_mlps(model)]
    groups = [(m.gate_proj, m.up_proj, m.down_proj) for m in mlps]
    if importance == "l2":
        return [_group_sum(g, lambda w: w.detach().double().pow(2)) for g in groups]
    if example is None:
        raise ValueError("importance='taylor' needs an example batch: the gradients are taken on it")
    weights = [lin.weight for g in groups for lin in g]
    modes = {m: m.training for m in model.modules()}
    flags = [w.requires_grad for w in weights]
    model.eval()
    try:
        for w in weights:
            w.requires_grad_(True)  # a frozen teacher too; its flags are restored below
        with torch.enable_grad():
            logits = logits_of(forward_batch(model, example))
            flat = logits.reshape(-1, logits.shape[-1])
            loss = nn.functional.cross_entropy(flat, flat.detach().argmax(-1))
            grads = dict(zip(map(id, weights), torch.autograd.grad(loss, weights), strict=True))
    finally:
        for m, training in modes.items():
            m.training = training
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)
    return [_group_sum(g, lambda w: (w.detach() * grads[id(w)]).double().abs()) for g in groups]


def _group_sum(group: tuple[nn.Linear, nn.Linear, nn.Linear], per_weight: Callable[[nn.Parameter], torch.Tensor]) -> torch.Tensor:
    """Channel ``j``'s score: ``per_weight`` summed over gate row j, up row j and down column j."""
    gate, up, down = group
    return (per_weight(gate.weight).sum(1) + per_weight(up.weight).sum(1) + per_weight(down.weight).sum(0)).cpu()


def _sliced(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new linear holding ``linear``'s rows (``dim=0``) or columns (``dim=1``) at ``index``."""
    w = linear.weight.detach()
    weight = w.index_select(dim, index.to(w.device)).clone()
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    out.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        bias = linear.bias.detach()
        bias = bias.index_select(0, index.to(bias.device)).clone() if dim == 0 else bias.clone()
        out.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    return out


def prune_ffn(model: nn.Module, keep: Sequence[Sequence[int] | torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose ``i``-th gated MLP keeps only the channels ``keep[i]`` (in order).

    Raises:
        ValueError: ``keep`` does not give one non-empty list of distinct, valid channels per gated MLP.
    """
    mlps = gated_mlps(model)
    if len(keep) != len(mlps):
        raise ValueError(f"keep gives {len(keep)} channel lists for the {len(mlps)} gated MLPs of {type(model).__name__}")
    indices = []
    for (name, mlp), k in zip(mlps, keep, strict=True):
        index = torch.as_tensor(k, dtype=torch.long).flatten().sort().values
        width = mlp.gate_proj.out_features
        if index.numel() == 0 or index.unique().numel() != index.numel() or index[0] < 0 or index[-1] >= width:
            raise ValueError(f"{name}: keep must name distinct channels in 0..{width - 1}, at least one; got {k!r}")
        indices.append(index)
    student = copy.deepcopy(model)
    widths = set()
    for (_, mlp), index in zip(gated_mlps(student), indices, strict=True):
        mlp.gate_proj = _sliced(mlp.gate_proj, index, 0)
        mlp.up_proj = _sliced(mlp.up_proj, index, 0)
        mlp.down_proj = _sliced(mlp.down_proj, index, 1)
        if isinstance(getattr(mlp, "intermediate_size", None), int):
            mlp.intermediate_size = index.numel()
        widths.add(index.numel())
    config = getattr(student, "config", None)
    if len(widths) == 1 and isinstance(getattr(config, "intermediate_size", None), int):
        config.intermediate_size = widths.pop()  # one width: the config describes the pruned model
    return student


def _caps(scores: Sequence[torch.Tensor], max_ratio: float) -> list[int]:
    """How many channels each layer may lose: at most ``max_ratio`` of them, and never the last one."""
    if not 0 < max_ratio < 1:
        raise ValueError(f"max_ratio must be a fraction in (0, 1), got {max_ratio!r}")
    return [min(int(max_ratio * s.numel()), s.numel() - 1) for s in scores]


def _keep(scores: Sequence[torch.Tensor], removed: int, global_pruning: bool, caps: Sequence[int]) -> list[torch.Tensor]:
    """The channels each layer keeps when ``removed`` go: per layer (uniform) or in total (global)."""
    order = [s.argsort(stable=True) for s in scores]  # least important first
    if not global_pruning:
        return [o[min(removed, cap):] for o, cap in zip(order, caps, strict=True)]
    # Only each layer's ``cap`` least important channels are candidates; the globally lowest (scores
    # relative to their layer's mean) of them go.
    cand = torch.cat([s[o[:cap]] / s.mean().clamp(min=1e-30) for s, o, cap in zip(scores, order, caps, strict=True)])
    layer = torch.cat([torch.full((cap,), i) for i, cap in enumerate(caps)])
    gone = torch.bincount(layer[cand.argsort(stable=True)[:removed]], minlength=len(scores))
    return [o[int(g):] for o, g in zip(order, gone, strict=True)]


def prune_llm(
    model: nn.Module,
    example: Any,
    ratio: float,
    *,
    importance: str = "l2",
    global_pruning: bool = False,
    max_ratio: float = 0.95,
) -> nn.Module:
    """A deep copy of ``model`` with the share ``ratio`` in [0, 1) of its FFN channels removed, the least
    important by ``importance`` (per layer, or across layers with ``global_pruning``)."""
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be a fraction in [0, 1), got {ratio!r}")
    scores = channel_importance(model, example, importance)
    caps = _caps(scores, max_ratio)
    if global_pruning:
        removed = round(ratio * sum(s.numel() for s in scores))
    else:
        removed = round(ratio * max(s.numel() for s in scores))
    return prune_ffn(model, _keep(scores, removed, global_pruning, caps))


def prune_llm_to_size(
    model: nn.Module,
    example: Any,
    target: int,
    size: Callable[[nn.Module], int],
    *,
    importance: str = "l2",
    global_pruning: bool = False,
    max_ratio: float = 0.95,
    tolerance: float = 0.01,
) -> nn.Module:
    """The FFN-pruned copy of ``model`` of the smallest ``size`` that is still >= ``target``.

    The number of channels removed (per layer, or in total with ``global_pruning``) is bisected over the
    integers, so the result is the smallest model of the search at or above ``target`` (the size only
    shrinks as channels go). ``tolerance`` bounds how far above the target the most pruned model may
    stay before that is an error.

    Raises:
        ValueError: ``model`` is already smaller than ``target``, it has no gated MLP, or removing all the
            FFN channels ``max_ratio`` allows still leaves it far above ``target`` (attention and embeddings
            are kept whole).
    """
    full = size(model)
    if full < target:
        raise ValueError(f"the teacher's size {full:,} is already below the target {target:,}: nothing to prune")
    scores = channel_importance(model, example, importance)
    caps = _caps(scores, max_ratio)
    most = sum(caps) if global_pruning else max(caps)

    def pruned(removed: int) -> nn.Module:
        return prune_ffn(model, _keep(scores, removed, global_pruning, caps))

    smallest = pruned(most)
    n = size(smallest)
    if n >= target:
        if n > target * (1 + 10 * tolerance):
            raise ValueError(
                f"removing {max_ratio:.0%} of every FFN's channels still leaves {type(model).__name__} at {n:,}, far "
                f"above the target {target:,} (attention and embeddings are kept): give a larger budget or a larger "
                "max_ratio"
            )
        return smallest
    lo, hi, best = 0, most, None  # size(pruned(lo)) >= target > size(pruned(hi))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        student = pruned(mid)
        if size(student) >= target:
            lo, best = mid, student
        else:
            hi = mid
    return best if best is not None else pruned(lo)
