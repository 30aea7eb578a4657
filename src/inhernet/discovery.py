"""Find the layers: which modules may be factorised, and why the others stay dense.

The first step after configuration. Nothing here measures or allocates; :func:`find_layers` only
reads the model's structure, its weights (to refuse non-float or non-finite ones) and, when an
example input is given, who reads each candidate's weight during one forward pass
(:mod:`inhernet.readers`).
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .config import InherConfig
from .kinds import LayerKind, dense_params, kind_of

__all__ = ["Candidate", "Unsupported", "factorisable", "find_layers", "matches"]

# Modules whose forward reads a descendant's ``.weight`` directly (its dtype, its row count), which a
# block has no single one of: (package of the reader's class, suffix of its class name, the paths it
# reads). Hugging Face's CLIP family (CLIP, SigLIP, X-CLIP, AltCLIP, CLIPSeg...) in its embeddings,
# open_clip's residual attention blocks for their cast dtype. Only the fallback when no example input
# is given: with one, the readers are found by running it (see inhernet.readers).
_WEIGHT_READERS = (
    ("transformers.", "Embeddings", ("patch_embedding", "position_embedding")),
    ("open_clip.", "ResidualAttentionBlock", ("mlp.c_fc",)),
)


@dataclass
class Candidate:
    """A supported layer that may be factorised (``reason`` is set when it must stay dense)."""

    name: str
    module: nn.Module
    kind: LayerKind
    reason: str | None = None


@dataclass
class Unsupported:
    """A module with parameters of no supported layer type: kept as is."""

    name: str
    type_name: str
    params: int
    reason: str


def matches(name: str, patterns: Iterable[str]) -> str | None:
    """The first of ``patterns`` (fnmatch, a pattern also matching its descendants) matching ``name``."""
    for p in patterns:
        if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*"):
            return p
    return None


def find_layers(
    model: nn.Module, config: InherConfig, readers: dict[str, str] | None = None
) -> tuple[list[Candidate], list[Unsupported]]:
    """Supported layers (with the reason when one must stay dense) and the unsupported ones.

    ``readers`` maps a layer to why it stays dense because code outside its own forward uses its weight
    values (from :func:`inhernet.readers.find_weight_readers` on an example input); without it, the
    known-reader table is the fallback.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    module_uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    param_uses = Counter(
        id(p) for _, m in model.named_modules(remove_duplicate=False) for p in m.parameters(recurse=False)
    )
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    modules = dict(model.named_modules())
    candidates, others = [], []
    for name, module in model.named_modules():
        own = dense_params(module)
        if own == 0:
            continue
        kind = kind_of(module)
        if kind is None:
            reason = f"unsupported layer type {type(module).__name__}; kept as is"
            others.append(Unsupported(name, type(module).__name__, own, reason))
            continue
        reason = kind.dense_reason(module)
        if reason is None:
            reason = _dense_by_config(name, config)
        if readers is None:
            if reason is None and isinstance(parents.get(id(module)), nn.MultiheadAttention):
                reason = "projection read directly by nn.MultiheadAttention; kept dense"
            if reason is None:
                reason = _weight_reader(name, modules)
        elif reason is None:
            reason = readers.get(name)
        if reason is None and module_uses[id(module)] > 1:
            reason = "module instance shared at several places; kept dense"
        if reason is None and any(param_uses[id(p)] > 1 for p in module.parameters(recurse=False)):
            reason = "weight tied to another module; kept dense"
        if reason is None:
            _check_weight(name, kind.weight(module))
        candidates.append(Candidate(name, module, kind, reason))
    return candidates, others


def factorisable(candidates: list[Candidate]) -> dict[str, tuple[nn.Module, LayerKind]]:
    """The candidates that may be factorised, as ``{name: (module, kind)}``."""
    return {c.name: (c.module, c.kind) for c in candidates if c.reason is None}


def _weight_reader(name: str, modules: dict[str, nn.Module]) -> str | None:
    """Why ``name`` stays dense when a known ancestor reads its ``.weight`` directly (see _WEIGHT_READERS)."""
    for package, suffix, paths in _WEIGHT_READERS:
        for path in paths:
            if name != path and not name.endswith("." + path):
                continue
            reader = type(modules.get(name[: -len(path)].rstrip(".")))
            if reader.__module__.startswith(package) and reader.__name__.endswith(suffix):
                return f"weight read directly by {reader.__name__}; kept dense"
    return None


def _dense_by_config(name: str, config: InherConfig) -> str | None:
    if config.include and matches(name, config.include) is None:
        return "not matched by include patterns"
    hit = matches(name, config.exclude)
    return f"excluded by pattern {hit!r}" if hit is not None else None


def _check_weight(name: str, w: torch.Tensor) -> None:
    if not w.is_floating_point():
        raise TypeError(
            f"layer {name!r} has {w.dtype} weights; inheritance needs floating-point weights "
            "(dequantise the model first, or exclude the layer)"
        )
    if not torch.isfinite(w).all():
        raise ValueError(f"layer {name!r} has NaN or infinite weights; fix the teacher or exclude the layer")
