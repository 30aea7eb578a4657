"""Distillation knobs that no shipped recipe uses (every run in BENCHMARKS.md trains with AdamW, cosine
decay, no warm-up and no weight decay), which :func:`inhernet.distill` takes as ``DistillConfig``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .._moved import refuse_moved
from ..config import is_int, is_real, plain_number
from ..distillation.config import EMBED_LOSSES, REMOVED, DistillConfig

__all__ = ["OPTIMIZERS", "SCHEDULES", "ExperimentalDistillConfig"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")


@refuse_moved(REMOVED)
@dataclass
class ExperimentalDistillConfig(DistillConfig):
    """:class:`~inhernet.distillation.DistillConfig` plus the knobs no shipped recipe sets.

    Knobs:
        weight_decay: decoupled (AdamW) / L2 (SGD) weight decay of the weights of 2 or more dimensions.
        optimizer: ``"adamw"`` or ``"sgd"`` (with ``momentum``).
        schedule: ``"cosine"`` (to 0 at ``steps``), ``"step"`` (times ``step_gamma`` at each fraction of
            the steps in ``step_milestones``) or ``"constant"``, after a linear warm-up of ``warmup_steps``.
        embed_loss: with ``loss="contrastive"`` and ``embed_weight > 0``: ``"cosine"`` or ``"mse"``.
    """

    weight_decay: float = 0.0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = 0
    step_gamma: float = 0.1
    step_milestones: tuple[float, ...] = (0.5, 0.75)
    embed_loss: Literal["cosine", "mse"] = "cosine"

    def __post_init__(self) -> None:
        if isinstance(self.step_milestones, (list, tuple)):
            self.step_milestones = tuple(plain_number(m) for m in self.step_milestones)
        super().__post_init__()  # numpy numbers of every field become plain ones first
        self._check_recipe()

    def _check_recipe(self) -> None:
        if not is_real(self.weight_decay) or self.weight_decay < 0:
            raise self._bad("weight_decay", "a number >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise self._bad("optimizer", f"one of {OPTIMIZERS}")
        if not is_real(self.momentum) or not 0 <= self.momentum < 1:
            raise self._bad("momentum", "a number in [0, 1)")
        if self.schedule not in SCHEDULES:
            raise self._bad("schedule", f"one of {SCHEDULES}")
        if not is_int(self.warmup_steps) or not 0 <= self.warmup_steps < self.steps:
            raise self._bad("warmup_steps", f"an int in [0, steps={self.steps})")
        if not is_real(self.step_gamma) or self.step_gamma <= 0:
            raise self._bad("step_gamma", "a positive number")
        self.step_milestones = tuple(self.step_milestones)
        if not all(is_real(m) and 0 < m < 1 for m in self.step_milestones):
            raise self._bad("step_milestones", "fractions in (0, 1) of the post-warm-up steps")
        if self.embed_loss not in EMBED_LOSSES:
            raise self._bad("embed_loss", f"one of {EMBED_LOSSES}")
