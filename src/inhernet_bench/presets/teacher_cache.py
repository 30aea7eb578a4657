"""A teacher fine-tuned once for a preset, cached on disk: ``model.safetensors`` + ``meta.json``.

The cache lives in ``inhernet_home()/"teachers"/<preset>/``. ``meta.json`` records how the teacher was
made (its ``recipe``: data, steps, learning rate, seed...) and what it scored; a cache whose recipe
differs from the one asked for, or whose weights no longer match the SHA-256 recorded beside them, is
stale and is not used. Both files are written atomically, the metadata last, so a half-written cache is
never mistaken for a complete one. Loading reads tensors only (safetensors), never pickled objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from inhernet._atomic import atomic_path, atomic_write
from inhernet._files import sha256_file
from inhernet_bench.presets.assets import inhernet_home

__all__ = ["FIT_THREADS", "fit_threads", "load_cached_teacher", "save_cached_teacher", "teacher_cache_dir"]

WEIGHTS_NAME = "model.safetensors"
META_NAME = "meta.json"


#: the torch threads a teacher is fine-tuned with, whatever the caller's: a CPU's float sums depend on how
#: the work is split, so that fits with 1 and 2 threads differ: with the same count on every machine, the
#: same teacher
FIT_THREADS = 2


@contextmanager
def fit_threads() -> Iterator[None]:
    """Run a teacher's fine-tuning with :data:`FIT_THREADS` torch threads, the caller's count restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(FIT_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def teacher_cache_dir(preset: str) -> Path:
    """``inhernet_home()/"teachers"/preset``: where the preset's fine-tuned teacher is cached."""
    if not preset or "/" in preset or preset.startswith("."):
        raise ValueError(f"preset must be a plain directory name like 'tweets-minilm', got {preset!r}")
    return inhernet_home() / "teachers" / preset


def save_cached_teacher(model: nn.Module, preset: str, recipe: dict[str, Any], **meta: Any) -> Path:
    """Cache ``model``'s weights for ``preset`` with its ``recipe`` and any JSON-able ``meta``.

    Returns the cache directory.
    """
    out = teacher_cache_dir(preset)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_NAME).unlink(missing_ok=True)  # no metadata vouches for weights being replaced
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        # contiguous: a channels-last model's tensors are saved as their values
        save_model(model, str(tmp), metadata={"format": "pt"}, force_contiguous=True)
    meta = {"recipe": recipe, **meta, "sha256": sha256_file(out / WEIGHTS_NAME)}
    atomic_write(out / META_NAME, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def load_cached_teacher(model: nn.Module, preset: str, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """Load the cached weights of ``preset`` into ``model`` (strict) and return the cache's metadata.

    Returns ``None``, leaving ``model`` untouched, when there is no complete cache, its recipe is not
    ``recipe`` (JSON round trip compared, so tuples equal lists) or its weights fail their checksum.

    Raises:
        ValueError: if the cached files are unreadable or do not fit ``model``.
    """
    folder = teacher_cache_dir(preset)
    meta_path, weights = folder / META_NAME, folder / WEIGHTS_NAME
    if not (meta_path.is_file() and weights.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_path} is not readable JSON ({err}); delete {folder} to rebuild it") from None
    if not isinstance(meta, dict) or meta.get("recipe") != json.loads(json.dumps(recipe)):
        return None
    if meta.get("sha256") != sha256_file(weights):
        return None
    try:
        load_model(model, str(weights), strict=True)
    except (SafetensorError, RuntimeError) as err:
        raise ValueError(f"{weights} does not fit the teacher ({err}); delete {folder} to rebuild it") from None
    return meta

