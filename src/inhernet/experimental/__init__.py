"""Ablation knobs: what BENCHMARKS.md measured and the method does not use, kept to reproduce it.

``ExperimentalConfig``: :func:`inhernet.inherit` takes it wherever it takes an :class:`inhernet.InherConfig`
(``min_rank``, ``expert_noise``, ``routing``, ``gate_pool``; ``init="random"``, the other allocations and
calibrations). ``ExperimentalDistillConfig``: :func:`inhernet.distill` takes it wherever it takes an
:class:`inhernet.DistillConfig` (other optimisers and schedules, warm-up, weight decay, ``gate_lr_scale``).
"""

from ..config import ExperimentalConfig
from .distillation import ExperimentalDistillConfig

__all__ = ["ExperimentalConfig", "ExperimentalDistillConfig"]
