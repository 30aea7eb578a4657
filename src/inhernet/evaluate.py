"""``evaluate()``: accuracy, perplexity or dual-encoder retrieval metrics of a model over a loader."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .batches import batch_labels, device_of, evaluating, forward_batch, lm_labels, logits_of, move_batch
from .dual import DUAL_METRICS, dual_metrics, pair_embeddings

__all__ = ["batch_sums", "evaluate"]

METRICS = ("accuracy", "perplexity", *DUAL_METRICS)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[Any], metric: str = "accuracy", *, max_batches: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Evaluate ``model`` on labelled batches, in eval mode (the previous mode is restored).

    ``accuracy``: top-1 over logits ``(N, C)``. ``perplexity``: causal-LM token perplexity, logits
    ``(N, T, V)`` predicting ``labels`` shifted by one, ignoring ``-100``; batches without labels use
    their ``input_ids``. Dual encoders: all five :data:`inhernet.dual.DUAL_METRICS` over the whole
    split (:func:`inhernet.dual.dual_metrics`). Returns ``{metric: value, "count": examples_or_tokens}``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric in DUAL_METRICS:
        return _evaluate_dual(model, loader, max_batches=max_batches, progress=progress)
    device = device_of(model)
    total, count = 0.0, 0
    with evaluating(model):
        for batch in _batches(loader, max_batches, progress):
            batch = move_batch(batch, device)
            logits = logits_of(forward_batch(model, batch)).float()
            labels = lm_labels(batch) if metric == "perplexity" else batch_labels(batch)
            if labels is None:
                raise ValueError("evaluate() needs labelled batches: (inputs, labels) tuples or dicts with 'labels'")
            part, n = batch_sums(logits, labels, metric)
            total, count = total + float(part), count + int(n)
    if count == 0:
        raise ValueError("evaluate() saw no labelled examples: the loader is empty")
    value = total / count if metric == "accuracy" else math.exp(total / count)
    return {metric: value, "count": float(count)}


def batch_sums(
    logits: torch.Tensor, labels: torch.Tensor, metric: str
) -> tuple[torch.Tensor, torch.Tensor | int]:
    """One batch's share of ``metric``: ``(correct, examples)`` for accuracy, ``(summed NLL, tokens)`` for
    perplexity (position ``t`` predicts ``labels[..., t + 1]``; label ``-100`` is ignored)."""
    if metric == "accuracy":
        return (logits.argmax(-1) == labels).sum(), labels.numel()
    shift_logits, shift_labels = logits[..., :-1, :], labels[..., 1:]
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
        ignore_index=-100, reduction="sum",
    )
    return nll, (shift_labels != -100).sum()


def _batches(loader: Iterable[Any], max_batches: int | None, progress: bool) -> Iterator[Any]:
    return itertools.islice(tqdm(loader, desc="evaluating", disable=not progress, leave=False), max_batches)


def _evaluate_dual(
    model: nn.Module, loader: Iterable[Any], *, max_batches: int | None, progress: bool
) -> dict[str, float]:
    """All dual-encoder metrics from the embeddings of every pair of the split."""
    device = device_of(model)
    with evaluating(model):
        pairs = [
            [t.cpu() for t in pair_embeddings(model, move_batch(batch, device))]
            for batch in _batches(loader, max_batches, progress)
        ]
    if not pairs:
        raise ValueError("evaluate() saw no labelled examples: the loader is empty")
    image, text, labels = (torch.cat(parts) for parts in zip(*pairs, strict=True))
    return {**dual_metrics(image, text, labels), "count": float(len(labels))}
