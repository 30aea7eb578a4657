"""``evaluate()``: accuracy or perplexity of a model over a loader."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .batches import batch_labels, forward_batch, logits_of, move_batch

__all__ = ["evaluate"]

METRICS = ("accuracy", "perplexity")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    metric: Literal["accuracy", "perplexity"] = "accuracy",
    *,
    max_batches: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Evaluate ``model`` on labelled batches, in eval mode (the previous mode is restored).

    ``accuracy``: top-1 over classification logits ``(N, C)``. ``perplexity``: causal-LM token
    perplexity, logits ``(N, T, V)`` predicting ``labels`` shifted by one, ignoring label ``-100``
    (Hugging Face convention); batches without labels use their ``input_ids``.
    Returns ``{metric: value, "count": examples_or_tokens}``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct, count, nll = 0, 0, 0.0
    try:
        for i, batch in enumerate(tqdm(loader, desc="evaluating", disable=not progress, leave=False)):
            if max_batches is not None and i >= max_batches:
                break
            batch = move_batch(batch, device)
            logits = logits_of(forward_batch(model, batch)).float()
            labels = batch_labels(batch)
            if labels is None and metric == "perplexity" and isinstance(batch, dict):
                labels = batch.get("input_ids")
            if labels is None:
                raise ValueError("evaluate() needs labelled batches: (inputs, labels) tuples or dicts with 'labels'")
            if metric == "accuracy":
                correct += int((logits.argmax(-1) == labels).sum())
                count += labels.numel()
            else:
                if isinstance(batch, dict) and "attention_mask" in batch and batch.get("labels") is None:
                    labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
                shift_logits, shift_labels = logits[..., :-1, :], labels[..., 1:]
                tokens = int((shift_labels != -100).sum())
                nll += float(F.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                    ignore_index=-100, reduction="sum",
                ))
                count += tokens
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate() saw no labelled examples: the loader is empty")
    value = correct / count if metric == "accuracy" else math.exp(nll / count)
    return {metric: value, "count": float(count)}
