"""One way to feed a batch to a model and read its logits: batches are tensors, ``(inputs, labels)``
tuples/lists or Hugging Face style dicts; outputs tensors or objects with ``.logits``; where a model runs
(:func:`device_of`) and in which mode (:func:`evaluating`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = [
    "TEACHER_LOGITS", "batch_labels", "batch_teacher_logits", "by_rows", "device_of", "evaluating", "forward_all",
    "forward_batch", "hooked", "lm_labels", "logits_of", "move_batch", "rows_of", "split_rows",
]

#: Key (dict batches) under which a batch may carry the teacher's precomputed logits; tuple batches
#: carry them as a third element ``(inputs, labels, teacher_logits)``.
TEACHER_LOGITS = "teacher_logits"
_NOT_INPUTS = ("labels", TEACHER_LOGITS)


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter, where its inputs go (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards, whatever happens, every submodule has its own
    training flag back (not the root's for all: a frozen batch-norm inside a training model stays frozen)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


@contextmanager
def hooked(handles: Iterable[Any]) -> Iterator[None]:
    """Remove the hook ``handles`` when the block ends, however it ends."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def move_batch(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor inside ``batch`` to ``device`` (nested tuples, lists and dicts)."""
    return _map_tensors(batch, lambda t: t.to(device))


def split_rows(batch: Any, rows: int) -> list[Any]:
    """``batch`` cut into the fewest batches of at most ``rows`` examples, of sizes as equal as possible
    (not 64 + 1: a batch norm cannot train on one example); the batch itself if it holds no tensor."""
    if rows < 1:
        raise ValueError(f"split_rows: rows must be >= 1, got {rows}")
    n = rows_of(batch)
    if n is None:
        return [batch]
    parts = max(1, -(-n // rows))
    bounds = [i * n // parts for i in range(parts + 1)]
    return [
        _map_tensors(batch, lambda t, a=a, b=b: t[a:b] if t.dim() else t) for a, b in itertools.pairwise(bounds)
    ]


def by_rows(batch: Any, rows_too: int | None) -> dict[str, Any]:
    """``batch`` whole and its first ``rows_too`` rows (when it has more: every tensor inside it sliced along
    its first dimension), keyed by rows as a string."""
    total = rows_of(batch)
    batches = {str(total): batch}
    if rows_too is not None and total is not None and rows_too < total:
        batches[str(rows_too)] = _map_tensors(batch, lambda t: t[:rows_too] if t.dim() else t)
    return batches


def rows_of(batch: Any) -> int | None:
    """How many examples ``batch`` holds: the first dimension of its first tensor (``None``: none)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    return next((n for n in map(rows_of, values) if n is not None), None)


def _map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``batch`` with ``fn`` applied to every tensor inside it (nested tuples, lists and dicts)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: _map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple takes its fields positionally
        return type(batch)(*(_map_tensors(v, fn) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_map_tensors(v, fn) for v in batch)
    return batch


def forward_batch(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on the inputs of ``batch`` (labels and teacher logits are never passed to it)."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**{k: v for k, v in batch.items() if k not in _NOT_INPUTS})
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("an empty tuple/list is not a batch; expected (inputs, labels) or inputs")
        return model(batch[0])
    raise TypeError(
        f"unsupported batch type {type(batch).__name__}; expected a tensor, an (inputs, labels) tuple "
        "or a dict of tensors"
    )


def batch_labels(batch: Any) -> torch.Tensor | None:
    """The labels carried by ``batch``, or ``None`` when it has none."""
    if isinstance(batch, Mapping):
        return batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return batch[1]
    return None


def lm_labels(batch: Any) -> torch.Tensor | None:
    """A causal LM's labels: the batch's own, else a dict batch's ``input_ids`` with padding set to -100."""
    labels = batch_labels(batch)
    if labels is None and isinstance(batch, Mapping) and "input_ids" in batch:
        labels = batch["input_ids"]
        if "attention_mask" in batch:
            labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    return labels


def batch_teacher_logits(batch: Any) -> Any:
    """The teacher's precomputed logits carried by ``batch`` (a tensor, or a
    :class:`~inhernet.distillation.TeacherTopK` cache of its top-k tokens), or ``None``."""
    if isinstance(batch, Mapping):
        return batch.get(TEACHER_LOGITS)
    if isinstance(batch, (tuple, list)) and len(batch) > 2:
        return batch[2]
    return None


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model output (a tensor, ``.logits``, or the first element of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; "
        "return a tensor or an object with a .logits attribute"
    )


@torch.no_grad()
def forward_all(model: nn.Module, batches: Iterable[Any]) -> None:
    """Run ``model`` in eval mode (:func:`evaluating`) over ``batches`` for what its hooks record."""
    device = device_of(model)
    with evaluating(model):
        for batch in batches:
            forward_batch(model, move_batch(batch, device))
