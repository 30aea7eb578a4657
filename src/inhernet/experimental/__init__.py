"""Ablation knobs: what BENCHMARKS.md measured and the method does not use, kept to reproduce it.

``from inhernet.experimental import ExperimentalConfig``: :func:`inhernet.inherit` takes it wherever it
takes an :class:`inhernet.InherConfig`.
"""

from .inheritance import ExperimentalConfig

__all__ = ["ExperimentalConfig"]
