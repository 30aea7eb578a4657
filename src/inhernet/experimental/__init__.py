"""Ablation knobs: what BENCHMARKS.md measured and the method does not use, kept to reproduce it.
:func:`inhernet.inherit` and :func:`inhernet.distill` take :class:`ExperimentalConfig` and
:class:`ExperimentalDistillConfig` wherever they take their configs (each lists its knobs)."""

from ..config import ExperimentalConfig
from .distillation import ExperimentalDistillConfig

__all__ = ["ExperimentalConfig", "ExperimentalDistillConfig"]
