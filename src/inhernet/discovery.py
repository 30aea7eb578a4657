"""Find the layers: which modules may be factorised, and why the others stay dense (nothing measured)."""

from __future__ import annotations

import fnmatch
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from .config import InherConfig
from .kinds import LayerKind, dense_params, forward_override, kind_of
from .readers import find_weight_readers

__all__ = ["Candidate", "Found", "Unsupported", "find_layers", "matches"]

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


class Found(NamedTuple):
    """What :func:`find_layers` found: every supported layer, the unsupported ones, and the layers that may be
    factorised as ``{name: (module, kind)}``, what the measuring steps and the build take."""

    candidates: list[Candidate]
    others: list[Unsupported]
    open: dict[str, tuple[nn.Module, LayerKind]]


def matches(name: str, patterns: Iterable[str]) -> str | None:
    """The first of ``patterns`` (fnmatch, a pattern also matching its descendants) matching ``name``."""
    for p in patterns:
        if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*"):
            return p
    return None


def find_layers(model: nn.Module, config: InherConfig, example: Any = None) -> Found:
    """Supported layers (with the reason when one must stay dense) and the unsupported ones. Layers whose
    weight's values are read outside their forward stay dense: found by running ``example``
    (:func:`inhernet.readers.find_weight_readers`); without it, only ``nn.MultiheadAttention``'s projections
    (other readers get the values a factorised layer computes)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    every_use = [m for _, m in model.named_modules(remove_duplicate=False)]
    module_uses = Counter(map(id, every_use))
    param_uses = Counter(id(p) for m in every_use for p in m.parameters(recurse=False))
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    candidates: list[Candidate] = []
    others: list[Unsupported] = []
    for name, module in model.named_modules():
        by_config = _dense_by_config(name, config)
        own, kind, type_name = dense_params(module), kind_of(module), type(module).__name__
        if own and kind is not None:
            reason = kind.dense_reason(module) or forward_override(module) or by_config
            candidates.append(Candidate(name, module, kind, reason))
        elif own:
            reason = f"unsupported layer type {type_name}; kept as is"
            others.append(Unsupported(name, type_name, own, reason))
    readers = None
    if example is not None:
        try:
            found = find_weight_readers(model, {c.name: c.module for c in candidates if c.reason is None}, example)
            readers = {name: f"weight read outside its forward by {r}; kept dense" for name, r in found.items()}
        except Exception as e:  # the model's own code failed under the probes: fall back, never crash here
            warnings.warn(f"could not trace weight readers on the example input ({type(e).__name__}: {e}); "
                          "checking nn.MultiheadAttention's projections only", stacklevel=2)
    for c in (c for c in candidates if c.reason is None):
        if readers is not None:
            c.reason = readers.get(c.name)
        elif isinstance(parents.get(id(c.module)), nn.MultiheadAttention):
            c.reason = "projection read directly by nn.MultiheadAttention; kept dense"
        if c.reason is None and module_uses[id(c.module)] > 1:
            c.reason = "module instance shared at several places; kept dense"
        if c.reason is None and any(param_uses[id(p)] > 1 for p in c.module.parameters(recurse=False)):
            c.reason = "weight tied to another module; kept dense"
        if c.reason is None:
            _check_weight(c.name, c.kind.weight(c.module))
    return Found(candidates, others, {c.name: (c.module, c.kind) for c in candidates if c.reason is None})


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
