"""The inheritance's ablation knobs: :class:`ExperimentalConfig`, an :class:`inhernet.InherConfig` that also
takes ``min_rank``, ``expert_noise``, ``routing``, ``gate_pool``, ``init="random"``,
``allocation="loss-by-type"`` / ``"uniform"`` and ``calibration="sequential-corrected"``.

Defined beside :class:`~inhernet.InherConfig` (a saved config that names an ablation loads as one); its
public home is here.
"""

from ..config import ExperimentalConfig

__all__ = ["ExperimentalConfig"]
