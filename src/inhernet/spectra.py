"""Measure the layers: their (whitened) spectra and, under a MAC or latency budget, their MACs or
measured times on the example input.

The step between finding the layers (:mod:`inhernet.discovery`) and allocating ranks
(:mod:`inhernet.allocation`): calibration statistics (:mod:`inhernet.calibration`, or stage by stage
with :mod:`inhernet.sequential`) turned into each layer's factors or energies.
"""

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
        if calib is None:
            raise ValueError(
                'init="whiten" needs calibration data: pass calib= (an iterable of model input batches), '
                'or use init="svd"'
            )
        covariances = collect_covariances(model, todo, calib, progress=progress)
    return {
        name: factorize(kind.matrix(module), covariances.get(name), config.damping)
        for name, (module, kind) in todo.items()
    }


def layer_spectra(
    model: nn.Module, candidates: list[Candidate], config: InherConfig, calib: Iterable[Any] | None,
    *, progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Every factorisable layer's (whitened, with ``init="whiten"``) output energies
    (:attr:`~inhernet.decomposition.Factors.output_energy`), for the allocator.

    With sequential calibration they are computed stage by stage on the teacher's own inputs,
    holding one block's statistics at a time, and only the energies are kept.
    """
    if config.init == "whiten" and config.calibration != "one-pass":
        stages = sequential_factors(
            model, factorisable(candidates), reiterable(calib), damping=config.damping, progress=progress
        )
        return {name: factors.output_energy for name, factors in stages}
    return {name: f.output_energy for name, f in decompose(model, candidates, config, calib, progress=progress).items()}


def reiterable(calib: Iterable[Any] | None) -> list[Any]:
    """``calib`` as a list (sequential calibration iterates it more than once)."""
    if calib is None:
        raise ValueError(
            'init="whiten" needs calibration data: pass calib= (an iterable of model input batches), '
            'or use init="svd"'
        )
    return calib if isinstance(calib, list) else list(calib)


def allocation_needs_spectra(config: InherConfig) -> bool:
    """Whether the allocation reads the layers' spectra (energy rules and energy-allocated budgets)."""
    target = config.target
    return target.kind == "energy" or (target.budgeted and config.allocation in ENERGY_STRATEGIES)
