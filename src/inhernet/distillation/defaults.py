"""The KD learning rate a student's family trains well at, chosen on validation data (evidence:
``benchmarks/results/kd-defaults/``, ``python -m inhernet_bench.scripts.kd_defaults``; docs/training.md)."""

from __future__ import annotations

from torch import nn

from ..families import model_family

__all__ = ["FAMILY_LR", "default_lr"]

# conv: mnist-cnn ties at 1e-4 / 3e-4, fashion-effnet on its converged teacher 3e-4 (interior; 1e-4 ties, 1e-3 -1.4 pt);
# encoder: bbc-minilm 1e-4 (interior), tweets-minilm's tuning too; dual encoder: fashion-dual 1e-4 (interior, on its
# converged teacher; 3e-4 loses 8 points); causal LM: smollm2-bbc 2e-4 (interior of 7e-5 / 2e-4 / 6e-4).
#: peak KD learning rate per family (``"dual-encoder"``: a student trained with ``loss="contrastive"``)
FAMILY_LR: dict[str, float] = {"conv": 3e-4, "encoder": 1e-4, "causal-lm": 2e-4, "dual-encoder": 1e-4, "other": 1e-3}


def default_lr(student: nn.Module, loss: str = "kd") -> tuple[float, str]:
    """``(learning rate, family)``: the KD learning rate of ``student``'s family (see :data:`FAMILY_LR`).

    A student trained with ``loss="contrastive"`` is a dual encoder, whatever its towers are made of.
    """
    family = "dual-encoder" if loss == "contrastive" else model_family(student)
    return FAMILY_LR[family], family
