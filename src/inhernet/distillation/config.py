"""``DistillConfig``: how a student is fine-tuned by knowledge distillation from its teacher."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from .._moved import refuse_moved
from ..config import check_fields, check_seed, is_int, is_real, plain_number
from ..evaluate import METRICS
from .loss import EMBED_LOSSES

__all__ = ["DistillConfig"]

LOSSES = ("kd", "contrastive")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = (
    "64-true", "64", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true",
    "transformer-engine", "transformer-engine-float16",
)
# Legacy spellings Lightning still understands, mapped to their explicit names.
_PRECISION_ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed"}


_EXPERIMENTAL = "inhernet.experimental.distillation.ExperimentalDistillConfig"
_UNUSED_RECIPE = (
    f"it moved to {_EXPERIMENTAL} (no shipped recipe or benchmark sets it: every run trains with AdamW, cosine "
    f"decay, no warm-up and no weight decay); use {_EXPERIMENTAL.rsplit('.', 1)[1]}(...) instead"
)
# The knobs that left DistillConfig, and where they went.
MOVED = {
    **{name: _UNUSED_RECIPE for name in (
        "weight_decay", "optimizer", "momentum", "schedule", "warmup_steps", "step_gamma", "step_milestones",
    )},
    "embed_loss": f"it moved to {_EXPERIMENTAL} (no preset matches embeddings by MSE; the cosine is fixed)",
}
# The knobs removed from both configs, and why (refused by name, as the moved ones are).
REMOVED = {"gate_lr_scale": "it was removed in inhernet 0.1.0: a faster gate learning rate made the gates route but "
           "changed no accuracy (benchmarks/results/experts-pay-mnist-cnn-0.1*.md)"}


def _devices_ok(devices: Any) -> bool:
    return (
        devices == "auto"
        or (is_int(devices) and (devices >= 1 or devices == -1))
        or (isinstance(devices, str) and devices.replace(",", "").strip().isdigit())
        or (isinstance(devices, (list, tuple)) and bool(devices) and all(map(is_int, devices)))
    )


#: DistillConfig's checks of one field each, in order: (field, whether its value is valid, what it must
#: be); the others are in :meth:`DistillConfig._check_combinations`
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("steps", lambda v: is_int(v, 1), "an int >= 1"),
    ("lr", lambda v: v is None or (is_real(v) and v > 0),
     "a positive number, or None (the student's family default)"),
    ("grad_clip", lambda v: v is None or (is_real(v) and v >= 0), "a number >= 0 or None"),
    ("loss", lambda v: v in LOSSES, f"one of {LOSSES}"),
    ("embed_weight", lambda v: is_real(v) and v >= 0, "a number >= 0"),
    ("temperature", lambda v: is_real(v) and v > 0, "a positive number"),
    ("alpha", lambda v: is_real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("teacher_topk", lambda v: v is None or is_int(v, 1),
     "None (full-logit KD) or an int >= 1, at most the vocabulary size"),
    ("feature_weight", lambda v: is_real(v) and v >= 0, "a number >= 0"),
    ("feature_loss", lambda v: v in EMBED_LOSSES, f"one of {EMBED_LOSSES}"),
    ("feature_patterns", lambda v: all(isinstance(p, str) and p for p in v),
     "a tuple of non-empty fnmatch patterns of module names"),
    ("precision", lambda v: v in PRECISIONS, f"a Lightning precision string, one of {PRECISIONS}"),
    ("devices", _devices_ok, "an int >= 1, -1 (all), 'auto', a list of device indices or a '0,1' string"),
    ("accelerator", lambda v: v in ACCELERATORS, f"one of {ACCELERATORS}"),
    ("strategy", lambda v: v != "", "a Lightning strategy name ('auto', 'ddp', 'ddp_spawn', 'fsdp', ...)"),
    ("strategy", lambda v: v is not None, "a Lightning strategy name or Strategy object"),
    ("num_nodes", lambda v: is_int(v, 1), "an int >= 1"),
    ("deterministic", lambda v: v in (True, False, "warn"), "True, False or 'warn'"),
    ("val_every", lambda v: v is None or is_int(v, 0), "an int >= 0 (0: validate only at the end) or None"),
    ("metric", lambda v: v in METRICS, f"one of {METRICS}"),
    ("checkpoint_every", lambda v: is_int(v, 0), "an int >= 0 (0: only when interrupted)"),
    ("keep_checkpoints", lambda v: is_int(v, -1), "an int >= 0, or -1 (all)"),
    ("keep", lambda v: v in ("last", "best"), "'last' or 'best'"),
)


@refuse_moved({**MOVED, **REMOVED})
@dataclass
class DistillConfig:
    """Configuration of KD fine-tuning (see :func:`inhernet.distill`).

    Optimisation (AdamW, cosine decay to 0 at ``steps``, stepped once per optimiser step; the other
    optimisers, schedules, warm-up and weight decay are knobs of
    :class:`inhernet.experimental.distillation.ExperimentalDistillConfig`: no shipped run uses them):
        steps: number of optimiser steps (one batch of the train loader per step and device; the
            loader is cycled over as many epochs as needed).
        lr: peak learning rate; ``None``: the student's family default
            (:data:`inhernet.distillation.defaults.FAMILY_LR`, chosen on validation data), set by ``distill``.
        grad_clip: clip the global gradient norm to this value (``None`` or 0 disables).

    Loss (see :func:`inhernet.distillation.kd_loss`):
        loss: ``"kd"`` (logit KD) or ``"contrastive"`` (dual encoders such as CLIP,
            :func:`~inhernet.distillation.contrastive_kd_loss`).
        temperature: KD softmax temperature ``T`` (the KL term is scaled by ``T**2``).
        alpha: weight of the KD term; ``1 - alpha`` weighs the cross-entropy with the labels (the
            InfoNCE loss with ``loss="contrastive"``). Batches without labels train on KD alone.
        teacher_topk: ``None`` (full-logit KD) or ``k``: KD against the teacher's ``k`` most likely
            classes plus a rest bucket (:func:`~inhernet.distillation.topk_kd_loss`), from the batches'
            ``precompute_teacher_topk`` cache or the teacher's logits. Needs ``loss="kd"``.
        embed_weight: with ``loss="contrastive"``, weight of the cosine distance of the embeddings; 0: none.
        feature_weight: weight of the loss between the outputs of matched modules (``feature_loss``); 0: none.
        feature_patterns: ``fnmatch`` patterns of the student's module names whose outputs are matched
            (:func:`inhernet.distillation.match_feature_names`). ``*`` also matches dots: a Llama
            stack's blocks alone are ``("model.layers.[0-9]", "model.layers.[0-9][0-9]")``.
        feature_loss: ``"mse"`` or ``"cosine"`` (blind to the outputs' scale, e.g. a growing residual stream).

    Hardware (passed to ``lightning.Trainer``):
        precision: a Lightning precision string: ``"32"``, ``"16-mixed"``, ``"bf16-mixed"`` (autocast),
            ``"16-true"``, ``"bf16-true"`` (the student is trained, and returned, in that dtype)...
        devices, accelerator, strategy, num_nodes: Lightning's arguments, e.g. ``devices=4,
            strategy="ddp"``; every step takes one loader batch *per device*.
        deterministic: Lightning's ``deterministic`` (``True``, ``False`` or ``"warn"``, for CUDA kernels
            without a deterministic implementation).

    Run:
        seed: seeds everything (``lightning.seed_everything``) and each epoch's order of the train
            loader; an int in [0, 2**32 - 1] (Lightning's range).
        val_every: validate every this many steps (``None``: ``steps // 10``, at least 1; 0: only at
            the end), and at the last step.
        val_at_start: validate once before training (the curve's point at step 0).
        metric: validation metric, ``"accuracy"``, ``"perplexity"`` or one of
            ``inhernet.dual.DUAL_METRICS``, as :func:`inhernet.evaluate` computes them.
        log_dir: where the CSV logs, ``checkpoints/`` and ``history.json`` go. ``None``: a temporary
            directory, or ``./out/distill`` when several processes take part (they must agree on it).
        checkpoint_every: save ``<log_dir>/checkpoints/last.ckpt`` every this many steps (0: on Ctrl-C only).
        keep_checkpoints: also keep this many most recent step checkpoints (-1: all of them).
        resume: a checkpoint path to continue from, or ``"last"``. Without it, a ``log_dir`` holding
            checkpoints of an earlier run is refused.
        keep: the student ends with its weights of the ``"last"`` step or of its ``"best"`` validation
            point (step 0 included; needs a validation loader).
        progress: a progress bar on a terminal, otherwise a line on stderr every ``steps // 10`` steps.

    numpy integers and floats are accepted wherever an ``int`` or a ``float`` is.
    """

    steps: int = 500
    lr: float | None = None
    # Fixed here, fields of ExperimentalDistillConfig (declared in their places, so that its fields keep
    # the order they had when they were all public).
    weight_decay: ClassVar[float] = 0.0
    optimizer: ClassVar[str] = "adamw"
    momentum: ClassVar[float] = 0.9
    schedule: ClassVar[str] = "cosine"
    warmup_steps: ClassVar[int] = 0
    step_gamma: ClassVar[float] = 0.1
    step_milestones: ClassVar[tuple[float, ...]] = (0.5, 0.75)
    loss: Literal["kd", "contrastive"] = "kd"
    temperature: float = 4.0
    alpha: float = 0.9
    teacher_topk: int | None = None
    embed_weight: float = 0.0
    embed_loss: ClassVar[str] = "cosine"
    feature_weight: float = 0.0
    feature_patterns: tuple[str, ...] = ()
    feature_loss: Literal["mse", "cosine"] = "mse"
    grad_clip: float | None = 1.0
    precision: str = "32"
    devices: Any = 1
    accelerator: str = "auto"
    strategy: Any = "auto"
    num_nodes: int = 1
    deterministic: bool | Literal["warn"] = True
    seed: int = 0
    val_every: int | None = None
    val_at_start: bool = True
    metric: str = "accuracy"
    log_dir: str | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 0
    resume: str | None = None
    keep: Literal["last", "best"] = "last"
    progress: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, plain_number(getattr(self, f.name)))
        if isinstance(self.devices, (list, tuple)):
            self.devices = type(self.devices)(plain_number(d) for d in self.devices)
        patterns = self.feature_patterns
        self.feature_patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        if isinstance(self.precision, str) or is_int(self.precision):  # 16 -> "16" -> "16-mixed"
            self.precision = _PRECISION_ALIASES.get(str(self.precision), str(self.precision))
        for name in ("log_dir", "resume"):  # accept os.PathLike
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))
        check_fields(self, _RULES, prefix=f"{type(self).__name__}.")
        self._check_combinations()

    def _bad(self, name: str, expected: str) -> ValueError:
        return ValueError(f"{type(self).__name__}.{name} must be {expected}, got {getattr(self, name)!r}")

    def _check_combinations(self) -> None:
        """The checks that read more than one field (and the seed's, which raise TypeError too)."""
        if self.teacher_topk is not None and self.loss != "kd":
            raise ValueError(
                f"DistillConfig.teacher_topk={self.teacher_topk} needs loss='kd' (logit KD), got "
                f"loss={self.loss!r}; set teacher_topk=None"
            )
        if self.feature_weight > 0 and not self.feature_patterns:
            raise ValueError(
                "DistillConfig.feature_weight > 0 needs feature_patterns, the module names whose outputs "
                "are matched, e.g. feature_patterns=('features.*', 'classifier')"
            )
        check_seed("DistillConfig.seed", self.seed)
        if self.resume == "last" and self.log_dir is None:
            raise ValueError("DistillConfig.resume='last' needs log_dir, the directory of the earlier run")

    @property
    def validation_interval(self) -> int:
        """Steps between validations (``steps`` when only the start and the end are validated)."""
        if self.val_every is None:
            return max(1, self.steps // 10)
        return self.val_every or self.steps

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of the fields (strategy objects become their class name)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if not isinstance(d["strategy"], str):
            d["strategy"] = type(self.strategy).__name__
        for name in ("step_milestones", "feature_patterns"):  # tuples (step_milestones: experimental only)
            if name in d:
                d[name] = list(d[name])
        return d
