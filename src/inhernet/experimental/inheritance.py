"""The inheritance's ablation knobs: :class:`ExperimentalConfig` (defined beside
:class:`~inhernet.InherConfig`, so that a saved config naming an ablation loads as one)."""

from ..config import ExperimentalConfig

__all__ = ["ExperimentalConfig"]
