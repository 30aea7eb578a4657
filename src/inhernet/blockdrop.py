"""Whole blocks dropped before the inheritance: ``InherConfig(drop_blocks=share)``.

``drop_blocks`` pays about ``share`` of the parameters a budget cuts by removing the blocks of lowest
Block Influence (ShortGPT, :func:`block_influence`), the rest by rank cuts at the same absolute budget
(why the causal-LM default is 1: BENCHMARKS.md, "drop_blocks: the share of the cut paid by whole blocks").
The :class:`DropRecord` names the blocks kept; :func:`inhernet.load` replays it (:func:`replay`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from .batches import forward_all, hooked
from .calibration import TokenMask
from .config import InherConfig, is_int
from .stack import keep_layers_, layer_stack

__all__ = ["DropRecord", "block_influence", "blocks_to_drop", "drop_for", "replay", "without_blocks"]


@dataclass
class DropRecord:
    """What dropping did: the ``stack`` (its name, of ``of`` blocks), the blocks ``kept``, every block's
    Block Influence, and the teacher's and the dropped model's parameters."""

    share: float
    stack: str
    of: int
    kept: list[int]
    influence: list[float]
    teacher_params: int
    params: int

    @property
    def dropped(self) -> list[int]:
        return sorted(set(range(self.of)) - set(self.kept))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{len(self.dropped)} of {self.of} blocks of {self.stack!r} dropped by Block Influence "
                f"{self.dropped}: {self.teacher_params:,} -> {self.params:,} parameters")


def blocks_to_drop(share: float, teacher_params: int, target: int, sizes: list[int]) -> int:
    """How many blocks (``sizes``, the least important first) pay about ``share`` of the cut
    ``teacher_params - target``, leaving the model over ``target`` and two blocks kept."""
    cut = teacher_params - target
    if share <= 0 or cut <= 0 or not sizes:
        return 0
    k = max(0, min(len(sizes) - 2, round(share * cut / (sum(sizes) / len(sizes)))))
    while k > 0 and sum(sizes[:k]) >= cut:  # the dropped model must leave rank to cut
        k -= 1
    return k


def drop_for(config: InherConfig, model: nn.Module, calib: Iterable[Any] | None) -> tuple[nn.Module, DropRecord]:
    """A copy of ``model`` without the blocks ``config.drop_blocks`` drops (``model`` itself if none), and
    the record.

    Raises:
        ValueError: no calibration batches (Block Influence reads them), or a model without a stack of
            repeated blocks.
    """
    if calib is None:
        raise ValueError("drop_blocks= needs calib=: the blocks to drop are chosen by their Block Influence on it")
    try:
        influence = block_influence(model, calib)
    except ValueError as err:
        raise ValueError(f"drop_blocks={config.drop_blocks:g}: {err}; use drop_blocks=0") from None
    name, stack = layer_stack(model)
    teacher_params = sum(p.numel() for p in model.parameters())
    order = sorted(range(len(stack)), key=lambda i: (influence[i], -i))  # least important first
    k = blocks_to_drop(config.drop_blocks or 0.0, teacher_params, config.target.of(teacher_params),
                       [sum(p.numel() for p in stack[i].parameters()) for i in order])
    kept = sorted(order[k:])
    dropped = without_blocks(model, kept) if k else model
    return dropped, DropRecord(float(config.drop_blocks or 0.0), name, len(stack), kept,
                               [round(v, 6) for v in influence], teacher_params,
                               sum(p.numel() for p in dropped.parameters()))


def without_blocks(model: nn.Module, kept: Sequence[int]) -> nn.Module:
    """A deep copy of ``model`` whose stack keeps only the blocks ``kept`` (sorted indices)."""
    copied = copy.deepcopy(model)
    keep_layers_(copied, kept)
    return copied


def replay(base: nn.Module, entry: Any) -> Callable[[], None]:
    """Keep in ``base`` (a fresh teacher), in place, the blocks a saved :class:`DropRecord` (``entry``) kept;
    returns the undo.

    Raises:
        ValueError: a malformed entry, or a base whose stack is not the one recorded.
    """
    kept = entry.get("kept") if isinstance(entry, dict) else None
    if not (isinstance(kept, list) and all(map(is_int, kept))
            and isinstance(entry.get("of"), int) and isinstance(entry.get("stack"), str)):
        raise ValueError("malformed 'drop' entry: an object with 'stack' (a name), 'of' and 'kept' (block indices)")
    name, stack = layer_stack(base)
    if (name, len(stack)) != (entry["stack"], entry["of"]):
        raise ValueError(
            f"the model was saved with blocks dropped from {entry['stack']!r} ({entry['of']} blocks), but base's "
            f"stack is {name!r} ({len(stack)} blocks): pass a model of the teacher's architecture"
        )
    if not kept or kept != sorted(set(kept)) or not all(0 <= i < len(stack) for i in kept):
        raise ValueError(f"malformed 'drop' entry: kept={kept} must be distinct sorted indices in 0..{len(stack) - 1}")
    return keep_layers_(base, kept)


def block_influence(model: nn.Module, calib: Iterable[Any]) -> list[float]:
    """Each block's Block Influence (ShortGPT): ``1 - cos(h_in, h_out)`` per token, averaged over the
    unpadded tokens of ``calib`` (0: the block passes its input through); ``model`` is not changed.

    Raises:
        ValueError: ``calib`` is empty, or a block's input or output is not a hidden-state tensor.
    """
    _, stack = layer_stack(model)
    total = torch.zeros(len(stack), dtype=torch.float64)
    count = torch.zeros(len(stack), dtype=torch.float64)
    mask = TokenMask()

    def hook(index: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        h_in = args[0] if args else kwargs.get("hidden_states")
        h_out = output[0] if isinstance(output, (tuple, list)) else output
        if not (isinstance(h_in, torch.Tensor) and isinstance(h_out, torch.Tensor) and h_in.shape == h_out.shape):
            raise ValueError(
                f"block {index} of the stack does not map a hidden-state tensor to one of the same shape: "
                "Block Influence needs transformer blocks"
            )
        sim = nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
        m = mask.current
        weight = m.to(sim) if m is not None and m.shape == sim.shape else torch.ones_like(sim)
        total[index] += float(((1 - sim) * weight).sum())
        count[index] += float(weight.sum())

    batches = list(calib)
    if not batches:
        raise ValueError("calib holds no batch: Block Influence is measured on calibration data")
    with hooked([block.register_forward_hook(partial(hook, i), with_kwargs=True)
                 for i, block in enumerate(stack)]):
        forward_all(model, mask.follow(batches))  # forward_all moves each batch to the model
    return (total / count.clamp(min=1)).tolist()
