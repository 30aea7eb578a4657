"""Knowledge-distillation fine-tuning on PyTorch Lightning, imported only when ``distill`` runs (or
``DistillModule`` is accessed): the losses and the config work without it."""

from __future__ import annotations

from typing import Any

from .config import DistillConfig
from .data import WithTeacherLogits, WithTeacherTopK, precompute_teacher_logits, precompute_teacher_topk
from .loss import (
    FeatureCapture,
    TeacherTopK,
    contrastive_kd_loss,
    feature_loss,
    kd_loss,
    match_feature_names,
    teacher_topk,
    topk_kd_loss,
)
from .train import Interrupted, distill

__all__ = [
    "DistillConfig", "DistillModule", "FeatureCapture", "Interrupted", "TeacherTopK", "WithTeacherLogits",
    "WithTeacherTopK", "contrastive_kd_loss", "distill", "feature_loss", "kd_loss", "match_feature_names",
    "precompute_teacher_logits", "precompute_teacher_topk", "teacher_topk", "topk_kd_loss",
]


def __getattr__(name: str) -> Any:
    if name == "DistillModule":
        from .module import DistillModule

        return DistillModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
