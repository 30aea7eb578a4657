"""The KD learning rate a student's family trains well at, chosen on validation data (evidence:
``benchmarks/results/kd-defaults/``, ``python -m inhernet_bench.scripts.kd_defaults``; docs/training.md)."""

from __future__ import annotations

from torch import nn

from ..families import model_family

__all__ = ["FAMILY_LR", "default_lr"]

# Chosen on validation data (benchmarks/results/kd-defaults/): conv 3e-4 (fashion-effnet: 1e-4 and 1e-3 tie it;
# mnist-cnn flat); encoder 1e-4 (bbc-minilm, tweets-minilm); dual encoder 1e-4 (fashion-dual: 3e-5 scores 2 points
# higher, within 2 s.e. of 500 pairs); causal LM 2e-4 (smollm2-bbc, interior of 7e-5 / 2e-4 / 6e-4).
#: peak KD learning rate per family (``"dual-encoder"``: a student trained with ``loss="contrastive"``)
FAMILY_LR: dict[str, float] = {"conv": 3e-4, "encoder": 1e-4, "causal-lm": 2e-4, "dual-encoder": 1e-4, "other": 1e-3}


def default_lr(student: nn.Module, loss: str = "kd") -> tuple[float, str]:
    """``(learning rate, family)``: the KD learning rate of ``student``'s family (see :data:`FAMILY_LR`).

    A student trained with ``loss="contrastive"`` is a dual encoder, whatever its towers are made of.
    """
    family = "dual-encoder" if loss == "contrastive" else model_family(student)
    return FAMILY_LR[family], family
