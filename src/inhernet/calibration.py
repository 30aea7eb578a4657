"""Input statistics for whitened inheritance, gathered with forward hooks in one pass over the data."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from .batches import device_of, forward_all, hooked, move_batch
from .kinds import EmbeddingKind, LayerKind

__all__ = [
    "InputCovariance", "TokenMask", "as_list", "collect_covariances", "covariance_hooks", "drop_unseen",
    "layer_input_shapes", "peek_example", "split_example",
]

T = TypeVar("T")

# Elements of unfolded input per covariance update: bounds calibration memory on big feature maps.
_MAX_ELEMENTS_PER_UPDATE = 1 << 24


@dataclass
class InputCovariance:
    """Running ``X^T X`` (float64) of a layer's inputs; a vector of token counts for embeddings."""

    n: int
    diagonal: bool
    device: torch.device | str = "cpu"
    total: torch.Tensor = field(init=False)
    count: int = 0

    def __post_init__(self) -> None:
        shape = (self.n,) if self.diagonal else (self.n, self.n)
        self.total = torch.zeros(shape, dtype=torch.float64, device=self.device)

    def update(self, rows: torch.Tensor) -> None:
        """Add rows of X (N, n), or for a diagonal covariance a vector of per-token counts."""
        if self.diagonal:
            rows = rows.to(self.total.device, torch.float64)
            self.total += rows
            self.count += int(rows.sum().item())
        else:
            # the product in (at least) float32, twice as fast; the sum in float64
            rows = rows.to(self.total.device, torch.promote_types(rows.dtype, torch.float32))
            self.total += (rows.T @ rows).double()
            self.count += rows.shape[0]

    def mean(self) -> torch.Tensor:
        """``X^T X / N`` (or its diagonal)."""
        return self.total / max(self.count, 1)


class TokenMask:
    """Which positions of the batch being run are real tokens (its ``attention_mask``): inputs aligned with
    the mask keep only those rows; inputs of any other shape (a pooled vector, a conv) count whole."""

    def __init__(self) -> None:
        self.current: torch.Tensor | None = None

    def set(self, batch: Any) -> None:
        """Take the mask of ``batch`` (a dict with a 2-d ``attention_mask``, already on the model's device),
        or none."""
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        ok = isinstance(mask, torch.Tensor) and mask.dim() == 2
        self.current = mask.bool() if ok else None  # type: ignore[union-attr]

    def follow(self, calib: Iterable[Any], device: torch.device | str | None = None) -> Iterator[Any]:
        """Each batch of ``calib`` (moved to ``device`` if given), its mask taken; an empty ``calib`` is refused."""
        seen = 0
        for batch in calib:
            seen += 1
            batch = batch if device is None else move_batch(batch, device)
            self.set(batch)
            yield batch
        if seen == 0:
            raise ValueError("calib is empty: pass an iterable of at least one batch of model inputs")

    def keep(self, x: torch.Tensor, embedding: bool) -> torch.Tensor:
        """``x`` without its padded positions where it is aligned with the mask, else ``x`` unchanged."""
        mask = self.current
        if mask is None:
            return x
        if embedding and x.dim() == 2 and x.shape[0] == 1 and x.shape[1] == mask.shape[1]:
            x = x.expand(mask.shape)  # ids shared by the batch (position ids): each sentence uses them
        aligned = x.shape == mask.shape if embedding else (x.dim() == 3 and x.shape[:2] == mask.shape)
        return x[mask.to(x.device)] if aligned else x


def collect_covariances(
    model: nn.Module, layers: dict[str, tuple[nn.Module, LayerKind]], calib: Iterable[Any], *, progress: bool = True,
) -> dict[str, InputCovariance]:
    """One forward pass of ``model`` (eval mode, no grad) over ``calib``: each layer's input covariance
    (``layers``: ``{name: (module, kind)}``); layers that saw no input are left out with a warning."""
    device, mask = device_of(model), TokenMask()
    bar = tqdm(calib, desc="calibrating", unit="batch", disable=not progress, leave=False)
    with covariance_hooks(layers, device, mask) as stats:
        forward_all(model, mask.follow(bar, device))
    return drop_unseen(stats, layers)


@contextmanager
def covariance_hooks(
    layers: dict[str, tuple[nn.Module, LayerKind]], device: torch.device | str = "cpu", mask: TokenMask | None = None,
) -> Iterator[dict[str, InputCovariance]]:
    """Pre-hooks on ``layers`` that fill the yielded ``{name: InputCovariance}`` while active (whatever runs
    the layers inside decides where the statistics come from); ``mask``, kept by the caller, drops padding."""
    stats: dict[str, InputCovariance] = {}
    mask = mask or TokenMask()  # one that never holds a mask keeps every row

    def hook(name: str, kind: LayerKind, module: nn.Module, args: tuple[Any, ...]) -> None:
        embedding = isinstance(kind, EmbeddingKind)
        x = mask.keep(kind.batched(module, unnested(args[0].detach())), embedding)
        if name not in stats:
            stats[name] = InputCovariance(kind.shape(module)[1], embedding, device=device)
        if x.dim() < 2:  # a single unbatched vector
            stats[name].update(kind.input_rows(module, x))
            return
        # split so that unfolded conv patches stay under the memory bound
        per_sample = max(1, x[0].numel() * math.prod(getattr(module, "kernel_size", None) or ()))
        for part in x.split(max(1, _MAX_ELEMENTS_PER_UPDATE // per_sample)):
            stats[name].update(kind.input_rows(module, part))

    with hooked([module.register_forward_pre_hook(partial(hook, name, kind))
                 for name, (module, kind) in layers.items()]):
        yield stats


def unnested(x: torch.Tensor) -> torch.Tensor:
    """A nested tensor (torch's transformer fast path) as one tensor of rows; anything else unchanged."""
    if not x.is_nested:
        return x
    return torch.cat([t.reshape(-1, t.shape[-1]) for t in x.unbind()])


def drop_unseen(
    stats: dict[str, InputCovariance], layers: dict[str, tuple[nn.Module, LayerKind]]
) -> dict[str, InputCovariance]:
    """``stats`` without the layers that saw no input, with a warning naming them (they use plain SVD)."""
    missing = [name for name in layers if name not in stats or stats[name].count == 0]
    if missing:
        warnings.warn(
            f"{len(missing)} layer(s) saw no calibration input and use plain SVD: {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else ""),
            stacklevel=3,
        )
        for name in missing:
            stats.pop(name, None)
    return stats


def split_example(calib: Iterable[Any] | None, why: str) -> tuple[Any, Iterable[Any]]:
    """:func:`peek_example`, refusing no ``calib`` (``why`` needs it) or an empty one."""
    if calib is None:
        raise ValueError(
            f"{why} needs an example input: pass calib= (an iterable of model input batches); its first "
            "batch is the example"
        )
    first, rest = peek_example(calib)
    if first is None:
        raise ValueError("calib is empty: pass an iterable of at least one batch of model inputs")
    return first, rest


def as_list(calib: Iterable[Any] | None) -> list[Any] | None:
    """``calib`` as a list to iterate more than once (a list itself, not a copy: callers may key caches on it)."""
    return calib if calib is None or isinstance(calib, list) else list(calib)


def peek_example(calib: Iterable[Any] | None) -> tuple[Any, Iterable[Any] | None]:
    """The first batch of ``calib`` (``None`` if there is none) and ``calib`` to iterate in full afterwards
    (a one-shot iterator re-chained)."""
    if calib is None:
        return None, None
    it = iter(calib)
    first = next(it, None)
    if first is None:
        return None, calib
    return first, (itertools.chain([first], it) if isinstance(calib, Iterator) else calib)


def layer_input_shapes(
    model: nn.Module, layers: Mapping[str, nn.Module], example: Any, describe: Callable[[nn.Module, torch.Tensor], T]
) -> dict[str, list[T]]:
    """One forward pass on ``example`` (eval mode, no grad): per layer that ran, ``describe(layer, input)``
    of each of its calls, in order."""
    seen: dict[str, list[T]] = {}

    def hook(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            seen.setdefault(name, []).append(describe(module, args[0]))

    with hooked([module.register_forward_pre_hook(partial(hook, name)) for name, module in layers.items()]):
        forward_all(model, [example])
    return seen
