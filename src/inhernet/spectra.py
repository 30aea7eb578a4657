"""Measure the layers' (whitened) spectra: calibration statistics (:mod:`inhernet.calibration`, or stage
by stage, :mod:`inhernet.sequential`) turned into each layer's factors or energies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .calibration import collect_covariances
from .config import ENERGY_STRATEGIES, InherConfig
from .decomposition import Factors, factorize
from .discovery import Candidate, factorisable
from .sequential import sequential_factors

__all__ = ["allocation_needs_spectra", "decompose", "layer_spectra", "reiterable"]


def decompose(
    model: nn.Module, candidates: list[Candidate], config: InherConfig, calib: Iterable[Any] | None,
    *, progress: bool = True,
) -> dict[str, Factors]:
    """Full-rank (whitened, with ``init="whiten"``) SVD of every factorisable layer, computed once."""
    todo = factorisable(candidates)
    covariances = {}
    if config.init == "whiten" and todo:
        covariances = collect_covariances(model, todo, _required(calib), progress=progress)
    return {
        name: factorize(kind.matrix(module), covariances.get(name), config.damping)
        for name, (module, kind) in todo.items()
    }


def layer_spectra(
    model: nn.Module, candidates: list[Candidate], config: InherConfig, calib: Iterable[Any] | None,
    *, progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Every factorisable layer's (whitened) output energies, for the allocator; with sequential
    calibration stage by stage, one block's statistics at a time."""
    if config.init == "whiten" and config.calibration != "one-pass":
        stages = sequential_factors(
            model, factorisable(candidates), reiterable(calib), damping=config.damping, progress=progress
        )
        return {name: factors.output_energy for name, factors in stages}
    return {name: f.output_energy for name, f in decompose(model, candidates, config, calib, progress=progress).items()}


def reiterable(calib: Iterable[Any] | None) -> list[Any]:
    """``calib`` as a list (sequential calibration iterates it more than once)."""
    calib = _required(calib)
    return calib if isinstance(calib, list) else list(calib)


def _required(calib: Iterable[Any] | None) -> Iterable[Any]:
    """``calib``, or the error of whitening without it."""
    if calib is None:
        raise ValueError(
            'init="whiten" needs calibration data: pass calib= (an iterable of model input batches), '
            'or use init="svd"'
        )
    return calib


def allocation_needs_spectra(config: InherConfig) -> bool:
    """Whether the allocation reads the layers' spectra (energy rules and energy-allocated budgets)."""
    target = config.target
    return target.kind == "energy" or (target.budgeted and config.allocation in ENERGY_STRATEGIES)
