"""Distillation losses: logit KD (full, or against a top-k teacher cache), contrastive KD for dual
encoders, and layer-aligned feature matching."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..dual import dual_output
from ..stack import origin_name

__all__ = [
    "FeatureCapture", "TeacherTopK", "contrastive_kd_loss", "feature_loss", "kd_loss", "match_feature_names",
    "teacher_topk", "topk_kd_loss",
]

EMBED_LOSSES = ("cosine", "mse")


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
    temperature: float = 4.0, alpha: float = 0.9, ignore_index: int = -100,
) -> torch.Tensor:
    """Hinton knowledge-distillation loss:
    ``(1 - alpha) * CE(student, labels) + alpha * T**2 * KL(softmax(teacher/T) || softmax(student/T))``.

    Logits ``(N, C)`` with labels ``(N,)``, or a causal LM's ``(N, T, V)`` with labels ``(N, T)``, position
    ``t`` predicting ``labels[:, t + 1]``. Positions whose target is ``ignore_index`` are left out of both
    terms, each a mean over the valid positions (0 if none). ``labels=None``: ``T**2 * KL`` alone, over
    every position. Computed in float32; the KL is summed over classes, then averaged over positions.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape; both models must predict the same classes/vocabulary"
        )
    _check_inputs(student_logits, temperature, alpha, "kd_loss")
    s, t = student_logits.float(), teacher_logits.float()
    if s.dim() == 3 and labels is not None:
        s, t, labels = s[:, :-1], t[:, :-1], labels[:, 1:]
    s, t = s.flatten(0, -2), t.flatten(0, -2)  # (positions, classes)

    kl = _row_kl(s, t, temperature, reduction="none").sum(-1)  # per position
    return _mix(kl, s, labels, temperature, alpha, ignore_index, "kd_loss")


def _check_inputs(logits: torch.Tensor | None, temperature: float, alpha: float, name: str) -> None:
    """``ValueError`` unless ``logits`` (if any) are ``(N, C)`` or ``(N, T, V)`` and ``T``, ``alpha`` fit."""
    if logits is not None and logits.dim() not in (2, 3):
        raise ValueError(
            f"{name}: expected logits (N, C) for classification or (N, T, V) for a causal LM, "
            f"got shape {tuple(logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"{name}: temperature must be positive, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"{name}: alpha must be in [0, 1], got {alpha}")


def _mix(
    kl: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None, temperature: float, alpha: float,
    ignore_index: int, name: str,
) -> torch.Tensor:
    """``kl`` (per position) mixed with the CE of the flat logits ``s`` as :func:`kd_loss` documents."""
    scale = temperature * temperature
    if labels is None:
        return scale * kl.mean()
    labels = labels.reshape(-1)
    if labels.numel() != s.shape[0]:
        raise ValueError(
            f"{name}: {labels.numel()} labels for {s.shape[0]} positions; labels must be (N,) for logits (N, C) "
            "or (N, T) for logits (N, T, V)"
        )
    valid = labels != ignore_index
    count = valid.sum().clamp_min(1)
    kl_term = torch.where(valid, kl, torch.zeros_like(kl)).sum() / count
    if alpha == 1:
        return scale * kl_term
    ce_term = F.cross_entropy(s, labels.long(), ignore_index=ignore_index, reduction="sum") / count
    return (1 - alpha) * ce_term + alpha * scale * kl_term


class TeacherTopK(NamedTuple):
    """The teacher's distribution at temperature ``T`` kept sparsely (:func:`teacher_topk`): its ``k`` most
    likely classes per position and the mass of all the others, the "rest" bucket."""

    #: ``log_softmax(teacher_logits / T)`` of the kept classes, ``(..., k)``, most likely first (float16 by default)
    logprobs: torch.Tensor
    #: their class (token) indices, ``(..., k)``, int32
    indices: torch.Tensor
    #: log of the teacher's probability outside the kept classes at ``T``, ``(...)``, float32; ``-inf`` when ``k = V``
    log_rest: torch.Tensor


def check_topk(k: Any, num_classes: int, name: str = "teacher_topk") -> int:
    """``k`` as an int, or ``ValueError`` unless it is an int in ``[1, num_classes]``."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
        raise ValueError(
            f"{name} must be an int in [1, {num_classes}] (the number of classes / vocabulary size), got {k!r}"
        )
    return int(k)


@torch.no_grad()
def teacher_topk(
    teacher_logits: torch.Tensor, k: int, temperature: float, dtype: torch.dtype = torch.float16
) -> TeacherTopK:
    """The ``k`` largest teacher probabilities at temperature ``T`` per position, and the log of the rest.

    ``logprobs`` are stored in ``dtype`` (float16 is off by < 0.4% down to log-probability -10);
    ``log_rest`` is a float32 logsumexp over the other classes (``log(1 - sum)`` would cancel).
    """
    if temperature <= 0:
        raise ValueError(f"teacher_topk: temperature must be positive, got {temperature}")
    k = check_topk(k, teacher_logits.shape[-1])
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    values, indices = log_p.topk(k, dim=-1)
    if k == log_p.shape[-1]:
        log_rest = torch.full_like(values[..., 0], -math.inf)
    else:
        log_rest = log_p.scatter_(-1, indices, -math.inf).logsumexp(-1)
    return TeacherTopK(values.to(dtype), indices.to(torch.int32), log_rest)


def topk_kd_loss(
    student_logits: torch.Tensor, teacher: TeacherTopK, labels: torch.Tensor | None = None,
    temperature: float = 4.0, alpha: float = 0.9, ignore_index: int = -100,
) -> torch.Tensor:
    """:func:`kd_loss` against the teacher's top-``k`` classes plus a rest bucket (:func:`teacher_topk`).

    The KL over the ``k + 1`` buckets, the student's summed the same way, is a lower bound of the full KL
    (equal when ``k`` is the number of classes). ``temperature`` must be the cache's.
    """
    logprobs, indices, log_rest = teacher
    _check_inputs(student_logits, temperature, alpha, "topk_kd_loss")
    positions = tuple(student_logits.shape[:-1])
    if logprobs.shape != indices.shape or tuple(logprobs.shape[:-1]) != positions or tuple(log_rest.shape) != positions:
        raise ValueError(
            f"topk_kd_loss: student logits {tuple(student_logits.shape)} and a teacher top-k cache of logprobs "
            f"{tuple(logprobs.shape)}, indices {tuple(indices.shape)}, log_rest {tuple(log_rest.shape)}; the cache "
            "must hold (..., k) entries and one rest per student position (same examples, same sequence length)"
        )
    check_topk(logprobs.shape[-1], student_logits.shape[-1], "topk_kd_loss: the cache's k")
    s = student_logits.float()
    if s.dim() == 3 and labels is not None:
        s, logprobs, indices, log_rest = s[:, :-1], logprobs[:, :-1], indices[:, :-1], log_rest[:, :-1]
        labels = labels[:, 1:]
    k = logprobs.shape[-1]
    s = s.flatten(0, -2)
    indices = indices.reshape(-1, k).long()
    log_q = F.log_softmax(s / temperature, dim=-1)
    # The student's rest: its kept classes pushed to the lowest finite float (not -inf, whose
    # logsumexp gradient is NaN when every class is kept).
    q_rest = log_q.scatter(-1, indices, torch.finfo(log_q.dtype).min).logsumexp(-1, keepdim=True)
    log_q = torch.cat([log_q.gather(-1, indices), q_rest], dim=-1)
    log_p = F.log_softmax(torch.cat([logprobs.reshape(-1, k).float(), log_rest.reshape(-1, 1).float()], -1), -1)
    p = log_p.exp()
    # A bucket the teacher gives no mass (the rest when k = V) adds 0, not 0 * -inf.
    kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)
    return _mix(kl, s, labels, temperature, alpha, ignore_index, "topk_kd_loss")


def contrastive_kd_loss(
    student_out: Any, teacher_out: Any, temperature: float = 4.0, alpha: float = 1.0,
    embed_weight: float = 0.0, embed_loss: str = "cosine",
) -> torch.Tensor:
    """Knowledge distillation between dual encoders (CLIP-style) on a batch of ``n`` image-text pairs:
    ``alpha * T**2 * (KL_i2t + KL_t2i) / 2 + (1 - alpha) * InfoNCE(student) + embed_weight * E``.

    ``KL_i2t`` is the KL over the texts of each image's row of ``logits_per_image``, ``KL_t2i`` the same
    per text; ``E`` the ``"cosine"`` or ``"mse"`` distance of the paired embeddings. The outputs are
    whatever :func:`inhernet.dual.dual_output` reads; the teacher is a constant; computed in float32.
    """
    _check_inputs(None, temperature, alpha, "contrastive_kd_loss")
    if embed_weight < 0 or embed_loss not in EMBED_LOSSES:
        raise ValueError(
            f"contrastive_kd_loss: embed_weight must be >= 0 and embed_loss one of {EMBED_LOSSES}, got "
            f"{embed_weight} and {embed_loss!r}"
        )
    s, t = dual_output(student_out), dual_output(teacher_out)
    s_logits, t_logits = s.logits_per_image, t.logits_per_image.detach()
    if s_logits.shape != t_logits.shape or s_logits.shape[0] != s_logits.shape[1]:
        raise ValueError(
            f"contrastive_kd_loss: student and teacher similarity matrices are {tuple(s_logits.shape)} and "
            f"{tuple(t_logits.shape)}; both must be (n, n) over the same n image-text pairs"
        )
    loss = s_logits.new_zeros(())
    if alpha > 0:
        kl = 0.5 * (_row_kl(s_logits, t_logits, temperature) + _row_kl(s_logits.T, t_logits.T, temperature))
        loss = loss + alpha * temperature * temperature * kl
    if alpha < 1:
        targets = torch.arange(len(s_logits), device=s_logits.device)
        info_nce = 0.5 * (F.cross_entropy(s_logits, targets) + F.cross_entropy(s_logits.T, targets))
        loss = loss + (1 - alpha) * info_nce
    if embed_weight > 0:
        loss = loss + embed_weight * 0.5 * (
            _embed_distance(s.image_embeds, t.image_embeds, embed_loss, "image")
            + _embed_distance(s.text_embeds, t.text_embeds, embed_loss, "text")
        )
    return loss


def _row_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, reduction: str = "batchmean"
) -> torch.Tensor:
    """``KL(softmax(teacher/T) || softmax(student/T))`` per row (the mean over rows by default)."""
    log_ps = F.log_softmax(student / temperature, dim=-1)
    log_pt = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_ps, log_pt, reduction=reduction, log_target=True)


def _embed_distance(s: torch.Tensor, t: torch.Tensor, kind: str, which: str) -> torch.Tensor:
    if s.shape != t.shape:
        raise ValueError(
            f"contrastive_kd_loss: embedding matching needs {which} embeddings of one shape, got "
            f"{tuple(s.shape)} (student) and {tuple(t.shape)} (teacher); set embed_weight=0"
        )
    return _distance(s, t, kind)


def _distance(s: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """``"mse"`` or ``"cosine"`` (mean ``1 - cos`` over the last dimension) in float32; ``t`` is a constant."""
    s, t = s.float(), t.detach().float()
    if kind == "mse":
        return F.mse_loss(s, t)
    return (1 - F.cosine_similarity(s, t, dim=-1)).mean()


def match_feature_names(student: nn.Module, teacher: nn.Module, patterns: Iterable[str]) -> list[tuple[str, str]]:
    """``(student module, teacher module)`` pairs whose outputs are matched, in student order: the student's
    modules whose names any ``fnmatch`` pattern matches, each with the teacher's module it came from (the
    same name, or the block a kept block was: :func:`inhernet.stack.origin_name`).

    Raises ``ValueError`` when nothing matches in both.
    """
    patterns = tuple(patterns)
    teacher_names = {name for name, _ in teacher.named_modules() if name}
    student_names = [name for name, _ in student.named_modules() if name]
    pairs = [(n, origin_name(student, n)) for n in student_names if any(fnmatchcase(n, p) for p in patterns)]
    names = [(s, t) for s, t in pairs if t in teacher_names]
    if not names:
        raise ValueError(
            f"feature_patterns {patterns} match no module present in both the student and the teacher; "
            f"student modules are e.g. {', '.join(student_names[:8])}"
        )
    return names


def _feature_tensor(output: Any, name: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("last_hidden_state", "logits"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, Sequence) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"feature loss: module {name!r} returned {type(output).__name__}, not a tensor (or a tuple starting "
        "with one); choose feature_patterns that match modules returning tensors"
    )


class FeatureCapture:
    """Context manager that records the outputs of ``model``'s modules ``names``: after ``with
    FeatureCapture(model, names) as cap: model(x)``, ``cap.features[name]`` is that module's output tensor."""

    def __init__(self, model: nn.Module, names: Iterable[str]):
        modules = dict(model.named_modules())
        self.names = list(names)
        missing = [n for n in self.names if n not in modules]
        if missing:
            raise ValueError(f"FeatureCapture: no module named {missing[0]!r} in {type(model).__name__}")
        self._modules = [(n, modules[n]) for n in self.names]
        self._handles: list[Any] = []
        self.features: dict[str, torch.Tensor] = {}

    def __enter__(self) -> FeatureCapture:
        self.features = {}
        for name, module in self._modules:
            def hook(_module: nn.Module, _inputs: Any, output: Any, name: str = name) -> None:
                self.features[name] = _feature_tensor(output, name)
            self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def feature_loss(
    student_features: Mapping[str, torch.Tensor], teacher_features: Mapping[str, torch.Tensor], kind: str = "mse"
) -> torch.Tensor:
    """Mean over module names of the ``"mse"`` or ``"cosine"`` distance between the student's and the
    (constant) teacher's outputs there, which must have the same shapes."""
    if kind not in EMBED_LOSSES:
        raise ValueError(f"feature_loss: kind must be one of {EMBED_LOSSES}, got {kind!r}")
    if not student_features:
        raise ValueError("feature_loss: no features were captured; did the forward pass run the matched modules?")
    losses = []
    for name, s in student_features.items():
        if name not in teacher_features:
            raise ValueError(f"feature_loss: the teacher produced no output for module {name!r}")
        t = teacher_features[name]
        if s.shape != t.shape:
            raise ValueError(
                f"feature_loss: module {name!r} outputs {tuple(s.shape)} in the student but {tuple(t.shape)} in "
                "the teacher; feature matching needs the same shapes (no adapters), so leave this module out "
                "of feature_patterns"
            )
        losses.append(_distance(s, t, kind))
    return torch.stack(losses).mean()
