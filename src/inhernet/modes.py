"""Where a model runs and in which mode: the bottom layer every module that runs a model uses."""

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
    training flag back (not the root's for all: a frozen batch-norm inside a training model stays frozen)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training
