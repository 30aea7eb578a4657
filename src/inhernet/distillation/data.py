"""Data set wrappers that carry the teacher's precomputed logits (or top-k tokens), and loader wrappers.

The loader wrappers replace Lightning's distributed-sampler injection to make an epoch's order depend
on ``(seed, epoch)`` only, a mid-epoch resume skip the batches already trained on, and validation
shards unpadded, so that the metric summed over processes equals :func:`inhernet.evaluate` on one.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
)
from tqdm.auto import tqdm

from ..batches import TEACHER_LOGITS, device_of, evaluating, forward_batch, logits_of, move_batch
from ..dual import dual_output, is_dual_output
from .loss import TeacherTopK, check_topk, teacher_topk

__all__ = [
    "EvalLoader", "TrainLoader", "WithTeacherLogits", "WithTeacherTopK", "precompute_teacher_logits",
    "precompute_teacher_topk",
]

_END = object()


def _sized_len(obj: Any) -> int | None:
    try:
        return len(obj)
    except (TypeError, NotImplementedError):
        return None


class WithTeacherLogits(Dataset):
    """``dataset`` whose examples carry the teacher's logits: a third element of ``(inputs, labels)``
    tuples, or the ``teacher_logits`` key of Hugging Face style dict examples.

    ``distill`` uses them instead of running the teacher: a fixed data set pays for the teacher once.
    """

    def __init__(self, dataset: Dataset, logits: torch.Tensor) -> None:
        if len(dataset) != len(logits):  # type: ignore[arg-type]
            raise ValueError(f"{len(logits)} teacher logits for a data set of {len(dataset)} examples")  # type: ignore[arg-type]
        self.dataset, self.logits = dataset, logits

    def __len__(self) -> int:
        return len(self.logits)

    def _teacher(self, index: int) -> Any:
        return self.logits[index]

    def __getitem__(self, index: int) -> Any:
        example = self.dataset[index]
        if isinstance(example, Mapping):
            return {**example, TEACHER_LOGITS: self._teacher(index)}
        inputs, labels = example[:2]
        return inputs, labels, self._teacher(index)


class WithTeacherTopK(WithTeacherLogits):
    """``dataset`` whose examples carry the teacher's top-``k`` cache (a :class:`TeacherTopK` of one example)
    where :class:`WithTeacherLogits` puts the full logits; built by :func:`precompute_teacher_topk`."""

    def __init__(self, dataset: Dataset, cache: TeacherTopK, temperature: float) -> None:
        super().__init__(dataset, cache.logprobs)  # checks the length; __getitem__ reads _teacher()
        self.cache, self.k, self.temperature = cache, int(cache.logprobs.shape[-1]), float(temperature)

    def _teacher(self, index: int) -> TeacherTopK:
        return TeacherTopK(*(field[index] for field in self.cache))

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds: ``positions * (k * (2 + 4) + 4)`` with float16 log-probabilities."""
        return sum(field.nbytes for field in self.cache)


@torch.no_grad()
def precompute_teacher_logits(teacher: nn.Module, dataset: Dataset, batch_size: int = 1000) -> WithTeacherLogits:
    """Run the teacher (eval mode) once over a map-style data set of ``(inputs, labels)`` or dict examples
    (a dual encoder's output is kept as its packed embeddings, :meth:`inhernet.dual.DualOutput.pack`)."""
    device = device_of(teacher)
    with evaluating(teacher):
        logits = [
            _per_example(forward_batch(teacher, move_batch(batch, device)))
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False)
        ]
    return WithTeacherLogits(dataset, torch.cat(logits))


@torch.no_grad()
def precompute_teacher_topk(
    teacher: nn.Module, dataset: Dataset, k: int, temperature: float, batch_size: int = 8,
    dtype: torch.dtype = torch.float16, progress: bool = False,
) -> WithTeacherTopK:
    """Run the teacher (eval mode) once over ``dataset`` and keep only its top-``k`` classes (tokens)
    per example and position, with the log of the rest of its probability at ``temperature``
    (:func:`inhernet.distillation.teacher_topk`): ``k * 6 + 4`` bytes per position instead of ``V * 4``.
    Train with ``DistillConfig(teacher_topk=k, temperature=temperature)``; ``progress`` shows a bar.
    """
    if temperature <= 0:
        raise ValueError(f"precompute_teacher_topk: temperature must be positive, got {temperature}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"precompute_teacher_topk: k must be an int >= 1, got {k!r}")
    device = device_of(teacher)
    parts: list[TeacherTopK] = []
    with evaluating(teacher):
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for batch in tqdm(loader, desc="teacher top-k", unit="batch", disable=not progress, leave=False):
            logits = logits_of(forward_batch(teacher, move_batch(batch, device)))
            check_topk(k, logits.shape[-1], "precompute_teacher_topk: k")
            parts.append(TeacherTopK(*(f.cpu() for f in teacher_topk(logits, k, temperature, dtype))))
    if not parts:
        raise ValueError("precompute_teacher_topk: the data set is empty")
    return WithTeacherTopK(dataset, TeacherTopK(*(torch.cat(f) for f in zip(*parts, strict=True))), temperature)


def check_topk_cache(loader: Any, k: int | None, temperature: float) -> None:
    """``ValueError`` unless a top-k cache behind ``loader`` (its ``dataset``) was made at ``k`` and ``temperature``."""
    cache = getattr(loader, "dataset", None)
    while isinstance(cache, Subset):
        cache = cache.dataset
    if isinstance(cache, WithTeacherTopK) and (cache.k != k or cache.temperature != temperature):
        raise ValueError(
            f"distill: the training set carries the teacher's top-{cache.k} tokens at temperature "
            f"{cache.temperature:g}, but DistillConfig has teacher_topk={k} and temperature={temperature:g}; "
            f"set DistillConfig(teacher_topk={cache.k}, temperature={cache.temperature:g}) or rebuild the cache"
        )


def _per_example(output: Any) -> torch.Tensor:
    """What a data set keeps of a teacher's output: its logits, or a dual encoder's packed pair."""
    return (dual_output(output).pack() if is_dual_output(output) else logits_of(output)).float().cpu()


def _seeded_iter(loader: Iterable[Any], seed: int, skip: int = 0) -> Iterator[Any]:
    """Iterate ``loader`` from batch ``skip`` on, drawing from a forked RNG seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        iterator = iter(loader)
        first = next(iterator, _END)
    if first is not _END:
        yield from itertools.islice(itertools.chain([first], iterator), skip, None)


class _BatchStride:
    """Batches ``rank, rank + world, ...`` of an iterable (the shard of one process)."""

    def __init__(self, loader: Iterable[Any], world: int, rank: int, drop_remainder: bool = False):
        self.loader, self.world, self.rank, self.drop_remainder = loader, world, rank, drop_remainder

    def __len__(self) -> int:
        n = _sized_len(self.loader)
        if n is None:
            raise TypeError("the wrapped loader has no length")
        return n // self.world if self.drop_remainder else len(range(self.rank, n, self.world))

    def __iter__(self) -> Iterator[Any]:
        n = _sized_len(self.loader)
        stop = (n // self.world) * self.world if (n is not None and self.drop_remainder) else None
        return itertools.islice(self.loader, self.rank, stop, self.world)


class _StridedSampler(_BatchStride, Sampler[int]):
    """Every ``world``-th index of a sampler, starting at ``rank``: an unpadded shard for evaluation."""


class _Sharded:
    """A loader's shard for this process, built on first use (:meth:`_sampler`, or every world-th batch)."""

    role = "training"
    drop_remainder = True  # every process takes as many batches (training steps must stay in lockstep)

    def __init__(self, loader: Iterable[Any], seed: int, trainer: Callable[[], Any]):
        self.loader, self.seed, self.trainer = loader, seed, trainer
        self._shard: Iterable[Any] | None = None

    def _sampler(self, loader: DataLoader, world: int, rank: int) -> Sampler[int]:
        raise NotImplementedError

    def _resolve(self) -> Iterable[Any]:
        if self._shard is None:
            trainer = self.trainer()  # the run's world, not whatever process group exists
            world, rank = int(trainer.world_size), int(trainer.global_rank)
            if world == 1:
                self._shard = self.loader
            elif isinstance(self.loader, DataLoader) and not isinstance(self.loader.dataset, IterableDataset):
                from lightning.pytorch.trainer.states import RunningStage
                from lightning.pytorch.utilities.data import _update_dataloader

                sampler = self._sampler(self.loader, world, rank)
                self._shard = _update_dataloader(self.loader, sampler, mode=RunningStage.TRAINING)
            else:
                self._shard = _BatchStride(self.loader, world, rank, drop_remainder=self.drop_remainder)
        return self._shard

    def __len__(self) -> int:
        n = _sized_len(self._resolve())
        if n is None:
            raise TypeError(f"the {self.role} loader has no length")
        return n


class TrainLoader(_Sharded):
    """The training loader as Lightning sees it: sharded, epoch-seeded and resumable (one batch per step:
    ``divmod(global_step, len(loader))`` is the epoch and the position in it)."""

    _iterations = 0  # the epochs begun: the epoch of a loader of unknown length

    def _sampler(self, loader: DataLoader, world: int, rank: int) -> Sampler[int]:
        """What Lightning would use: a ``DistributedSampler`` (padded shards), seeded with the run's seed."""
        if isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
            return DistributedSampler(
                loader.dataset, num_replicas=world, rank=rank,
                shuffle=isinstance(loader.sampler, RandomSampler), seed=self.seed,
            )
        from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

        return DistributedSamplerWrapper(loader.sampler, num_replicas=world, rank=rank, shuffle=False, seed=self.seed)

    def __iter__(self) -> Iterator[Any]:
        loader = self._resolve()
        n = _sized_len(loader)
        step = int(self.trainer().global_step)
        if n:
            epoch, skip = divmod(step, n)
        else:
            epoch, skip = self._iterations, 0
            if step and self._iterations == 0:
                warnings.warn(
                    "resuming with a training loader of unknown length: its position cannot be restored, "
                    "training continues from the start of the loader",
                    stacklevel=2,
                )
        self._iterations += 1
        for holder in (loader, getattr(loader, "batch_sampler", None)):
            set_epoch = getattr(getattr(holder, "sampler", None), "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
        return _seeded_iter(loader, seed=(self.seed * 1_000_003 + epoch) % (2**63), skip=skip)

    # Lightning's resumable-loader protocol. The position itself comes from the global step; this
    # only checks that the loader did not change length between the runs.
    def state_dict(self) -> dict[str, Any]:
        return {"batches_per_epoch": _sized_len(self._resolve())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved, now = state.get("batches_per_epoch"), _sized_len(self._resolve())
        if saved is not None and now is not None and saved != now:
            warnings.warn(
                f"the checkpoint was trained with {saved} batches per epoch and this loader has {now}: the "
                "resumed run does not see the same data order as an uninterrupted one",
                stacklevel=2,
            )


class EvalLoader(_Sharded):
    """The validation loader: an unpadded shard per process, iterated without touching the global RNG."""

    role = "validation"
    drop_remainder = False  # every example is validated once: the metric equals evaluate() on one process

    def _sampler(self, loader: DataLoader, world: int, rank: int) -> Sampler[int]:
        return _StridedSampler(loader.sampler, world, rank)

    def __iter__(self) -> Iterator[Any]:
        return _seeded_iter(self._resolve(), seed=self.seed)
