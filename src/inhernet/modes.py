"""Where a model runs and in which mode: :func:`device_of` and :func:`evaluating`.

A bottom layer of the package (no inhernet imports), so that every module that runs a model for
measurement (calibration, evaluation, export, precomputed teacher outputs...) finds its device and
borrows eval mode the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["device_of", "evaluating"]


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter, where its inputs go (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards, whatever happens, every submodule has its own
    training flag back (not the root's for all: a frozen batch-norm inside a training model stays frozen).

    ``with evaluating(model): ...`` replaces ``was_training = model.training; model.eval(); try: ...
    finally: model.train(was_training)``.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training
