"""Measure the layers' (whitened) spectra: calibration statistics (:mod:`inhernet.calibration`, or stage
by stage, :mod:`inhernet.sequential`) turned into each layer's factors or energies."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import collect_covariances
from .config import ENERGY_STRATEGIES, InherConfig
from .decomposition import Factors, factorize
from .kinds import LayerKind
from .sequential import sequential_factors

__all__ = ["allocation_needs_spectra", "decompose", "measure", "reiterable"]

#: one INFO line per layer factorised (``inhernet compress`` prints them when its output is not a terminal)
log = logging.getLogger("inhernet")


def measure(
    model: nn.Module, todo: dict[str, tuple[nn.Module, LayerKind]], config: InherConfig, calib: Iterable[Any] | None,
    *, keep_factors: bool, progress: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Factors]]:
    """The energies the allocation reads (empty where it reads none) and, with ``keep_factors``, the one-pass
    factors the build reuses; with sequential calibration, stage by stage: energies only (the build
    calibrates again, stage by stage)."""
    one_pass = config.init != "whiten" or config.calibration == "one-pass"
    if not allocation_needs_spectra(config) and not (one_pass and keep_factors and config.init != "random"):
        return {}, {}
    if one_pass:
        factors = decompose(model, todo, config, calib, progress=progress)
        return {name: f.output_energy for name, f in factors.items()}, factors
    stages = sequential_factors(model, todo, reiterable(calib), damping=config.damping, progress=progress)
    return {name: factors.output_energy for name, factors in stages}, {}


def decompose(
    model: nn.Module, todo: dict[str, tuple[nn.Module, LayerKind]], config: InherConfig,
    calib: Iterable[Any] | None, *, progress: bool = True,
) -> dict[str, Factors]:
    """Full-rank (whitened, with ``init="whiten"``) SVD of every layer of ``todo``, computed once."""
    covariances = {}
    if config.init == "whiten" and todo:
        covariances = collect_covariances(model, todo, _required(calib), progress=progress)
    factors = {}
    for i, (name, (module, kind)) in enumerate(tqdm(todo.items(), desc="factorising", unit="layer",
                                                     disable=not progress, leave=False), 1):
        factors[name] = factorize(kind.matrix(module), covariances.get(name), config.damping)
        log.info("factorised %s (%d of %d layers)", name, i, len(todo))
    return factors


def reiterable(calib: Iterable[Any] | None) -> list[Any]:
    """``calib`` as a list (sequential calibration iterates it more than once)."""
    return list(_required(calib))


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
