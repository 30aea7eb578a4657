"""The teacher's top-k cache of a benchmark's training examples, kept on disk between processes.

A SmolLM2 benchmark spends 0.26 s of teacher time per training block on its top-k cache (17 minutes for
1,000 steps of 4 blocks), and every process paid it again: each method run in its own session, and a run
resumed from its checkpoint. The store keys a cache on everything it depends on (the teacher's weights,
every training example's tensors, ``k`` and the temperature) and keeps it as safetensors under
``$INHERNET_HOME/teacher-topk/``: read back without unpickling, written atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from inhernet._atomic import atomic_path
from inhernet.distillation import precompute_teacher_topk
from inhernet.distillation.data import WithTeacherTopK
from inhernet.distillation.loss import TeacherTopK
from inhernet_bench.presets.assets import inhernet_home

__all__ = ["hash_tensor", "stored_teacher_topk", "topk_store_path"]


def hash_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    """Feed ``tensor``'s name, dtype, shape and bytes to the ``hashlib`` object ``digest``."""
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
    digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def _hash_example(digest: Any, example: Any, name: str = "") -> None:
    if isinstance(example, torch.Tensor):
        hash_tensor(digest, name, example)
    elif isinstance(example, Mapping):
        for key in sorted(example):
            _hash_example(digest, example[key], f"{name}.{key}")
    elif isinstance(example, (tuple, list)):
        for i, item in enumerate(example):
            _hash_example(digest, item, f"{name}.{i}")
    else:
        digest.update(f"{name}={example!r};".encode())


def topk_store_path(teacher: str, dataset: Any, k: int, temperature: float) -> Path:
    """Where the cache of teacher ``teacher`` (its :func:`~inhernet_bench.teacher_digest`) over ``dataset``
    at ``k`` and ``temperature`` is kept: a name hashed from all of them, every example's tensors included."""
    digest = hashlib.sha256(f"teacher={teacher};k={k};T={float(temperature)!r};n={len(dataset)};".encode())
    for i in range(len(dataset)):
        _hash_example(digest, dataset[i], str(i))
    return inhernet_home() / "teacher-topk" / f"{digest.hexdigest()[:24]}.safetensors"


def stored_teacher_topk(
    teacher: nn.Module, teacher_digest: str, dataset: Any, k: int, temperature: float, progress: bool = False
) -> WithTeacherTopK:
    """:func:`~inhernet.distillation.precompute_teacher_topk`, run once per teacher, examples, ``k`` and
    temperature and read from the store afterwards (``progress``: a bar over the teacher's pass)."""
    path = topk_store_path(teacher_digest, dataset, k, temperature)
    if path.is_file():
        stored = load_file(path)
        return WithTeacherTopK(dataset, TeacherTopK(*(stored[f] for f in TeacherTopK._fields)), temperature)
    cached = precompute_teacher_topk(teacher, dataset, k, temperature, progress=progress)
    with atomic_path(path) as tmp:
        save_file({f: t.contiguous() for f, t in zip(TeacherTopK._fields, cached.cache, strict=True)}, str(tmp))
    return cached
