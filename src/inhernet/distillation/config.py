"""``DistillConfig``: how a student is fine-tuned by knowledge distillation from its teacher."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from ..config import check_seed, plain_number
from ..dual import DUAL_METRICS

__all__ = ["DistillConfig"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
METRICS = ("accuracy", "perplexity", *DUAL_METRICS)
LOSSES = ("kd", "contrastive")
EMBED_LOSSES = ("cosine", "mse")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = (
    "64-true", "64", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true",
    "transformer-engine", "transformer-engine-float16",
)
# Legacy spellings Lightning still understands, mapped to their explicit names.
_PRECISION_ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed"}


@dataclass
class DistillConfig:
    """Configuration of KD fine-tuning (see :func:`inhernet.distill`).

    Optimisation:
        steps: number of optimiser steps (one batch of the train loader per step and device; the
            loader is cycled over as many epochs as needed).
        lr: peak learning rate (after warm-up).
        weight_decay: decoupled (AdamW) / L2 (SGD) weight decay, applied to weights of 2 or more
            dimensions only (biases, norms, gate offsets are not decayed).
        optimizer: ``"adamw"`` or ``"sgd"`` (with ``momentum``, 0.9 by default).
        schedule: ``"cosine"`` (to 0 at ``steps``), ``"step"`` (multiply by ``step_gamma`` at each
            fraction of the post-warm-up steps in ``step_milestones``) or ``"constant"``; all after a
            linear warm-up of ``warmup_steps``. Stepped once per optimiser step.
        gate_lr_scale: learning-rate multiplier for the gates of InherNet blocks (their own optimiser
            parameter groups, same schedule). A gate's gradient is proportional to how far the experts
            are apart, which starts at ``expert_noise`` (2%) of the layer: a larger rate lets the gates
            leave uniform within a short schedule. 1 = no special treatment.
        grad_clip: clip the global gradient norm to this value (``None`` or 0 disables).

    Loss (see :func:`inhernet.distillation.kd_loss`):
        loss: ``"kd"`` (logit KD, :func:`~inhernet.distillation.kd_loss`) or ``"contrastive"`` (dual
            encoders such as CLIP: KL between the teacher's and the student's image->text and
            text->image similarity distributions over each batch,
            :func:`~inhernet.distillation.contrastive_kd_loss`). Precomputed teacher outputs are then
            the teacher's packed per-example embeddings (``precompute_teacher_logits`` packs them), from
            which each batch's similarities are rebuilt.
        temperature: KD softmax temperature ``T`` (the KL term is scaled by ``T**2``).
        alpha: weight of the KD term; ``1 - alpha`` weighs the cross-entropy with the labels (with
            ``loss="contrastive"``: the student's own InfoNCE loss on the pairs of the batch).
            Batches without labels are trained on the KD term alone.
        teacher_topk: ``None`` (full-logit KD) or ``k``: KD against the teacher's ``k`` most likely
            classes (tokens) per position plus one bucket for the rest of its probability
            (:func:`~inhernet.distillation.topk_kd_loss`). Batches may carry the teacher's top-``k``
            cache (``precompute_teacher_topk``, at this ``k`` and ``temperature``: a language model's
            teacher then never runs during training); otherwise it is taken from the teacher's logits,
            live or precomputed, at each step (the same loss). Needs ``loss="kd"``.
        embed_weight: with ``loss="contrastive"``, weight of the matching of the student's image and
            text embeddings to the teacher's (``embed_loss``: ``"cosine"`` or ``"mse"``); 0 disables it.
        feature_weight: weight of the layer-aligned feature loss (``feature_loss`` between the outputs of
            the student's modules and the teacher's modules they came from: the same name, or the original
            block of a block-dropped stack); 0 disables it.
        feature_patterns: ``fnmatch`` patterns of the student's module names whose outputs are matched
            (only modules with a teacher counterpart count; see
            :func:`inhernet.distillation.match_feature_names`). ``*`` also matches dots: the blocks of a
            Llama stack alone are ``("model.layers.[0-9]", "model.layers.[0-9][0-9]")``.
        feature_loss: ``"mse"`` or ``"cosine"`` (mean ``1 - cos`` over the last dimension: each
            position's direction only, whatever the scale of the module's outputs, e.g. a transformer's
            residual stream, which grows from block to block).

    Hardware (passed to ``lightning.Trainer``):
        precision: a Lightning precision string: ``"32"`` (= ``"32-true"``), ``"16-mixed"``,
            ``"bf16-mixed"`` (autocast; weights stay float32), ``"16-true"``, ``"bf16-true"`` (the
            student is trained, and returned, in that dtype; the teacher's dtype is restored), ``"64"``...
        devices, accelerator, strategy, num_nodes: Lightning's arguments of the same names, e.g.
            ``devices=4, strategy="ddp"`` for data parallel training on 4 GPUs. With ``devices=N``,
            every step consumes one batch of the train loader *per device* (the global batch is
            ``N * num_nodes * batch_size``).
        deterministic: Lightning's ``deterministic`` (``True``, ``False`` or ``"warn"``). Some CUDA
            kernels have no deterministic implementation; use ``"warn"`` if one raises.

    Run:
        seed: seeds everything (``lightning.seed_everything``) and the order of every epoch of the
            train loader (a function of ``seed`` and the epoch only, which makes resume exact); an
            int in [0, 2**32 - 1], the range Lightning seeds with (outside it, Lightning would silently
            pick a random seed).

    numpy integers are accepted wherever an ``int`` is, numpy floats where a ``float`` is.
        val_every: validate every this many steps (``None``: ``steps // 10``, at least 1; 0: only at
            the end). Validation also runs at the start (``val_at_start``) and at the last step.
        val_at_start: validate once before training (the curve's point at step 0).
        metric: validation metric, ``"accuracy"``, ``"perplexity"`` or, for dual encoders, one of
            ``inhernet.dual.DUAL_METRICS`` (``"zero-shot-accuracy"``, ``"i2t-recall@1"``...), as
            :func:`inhernet.evaluate` computes them.
        log_dir: where the CSV logs (``logs/version_*``), checkpoints (``checkpoints/``) and
            ``history.json`` go. ``None``: a fresh temporary directory for a single process run,
            ``./out/distill`` when several processes take part (they must agree on it).
        checkpoint_every: save a Lightning checkpoint every this many steps, plus ``last.ckpt``
            (0: no checkpoints). Checkpoints hold the student, optimiser, scheduler, RNG states and the
            history, never the frozen teacher.
        resume: a checkpoint path to continue from, or ``"last"`` (``<log_dir>/checkpoints/last.ckpt``).
        progress: show Lightning's progress bar, model summary and info messages.
    """

    steps: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = 0
    step_gamma: float = 0.1
    step_milestones: tuple[float, ...] = (0.5, 0.75)
    loss: Literal["kd", "contrastive"] = "kd"
    temperature: float = 4.0
    alpha: float = 0.9
    teacher_topk: int | None = None
    embed_weight: float = 0.0
    embed_loss: Literal["cosine", "mse"] = "cosine"
    feature_weight: float = 0.0
    feature_patterns: tuple[str, ...] = ()
    feature_loss: Literal["mse", "cosine"] = "mse"
    gate_lr_scale: float = 1.0
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
    resume: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        # numpy integers and floats count as ints and floats.
        for f in fields(self):
            setattr(self, f.name, plain_number(getattr(self, f.name)))
        if isinstance(self.step_milestones, (list, tuple)):
            self.step_milestones = tuple(plain_number(m) for m in self.step_milestones)
        if isinstance(self.devices, (list, tuple)):
            self.devices = type(self.devices)(plain_number(d) for d in self.devices)

        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"DistillConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.steps) or self.steps < 1:
            raise bad("steps", "an int >= 1")
        if not is_num(self.lr) or self.lr <= 0:
            raise bad("lr", "a positive number")
        if not is_num(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "a number >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"one of {OPTIMIZERS}")
        if not is_num(self.momentum) or not 0 <= self.momentum < 1:
            raise bad("momentum", "a number in [0, 1)")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {SCHEDULES}")
        if not is_int(self.warmup_steps) or not 0 <= self.warmup_steps < self.steps:
            raise bad("warmup_steps", f"an int in [0, steps={self.steps})")
        if not is_num(self.step_gamma) or self.step_gamma <= 0:
            raise bad("step_gamma", "a positive number")
        self.step_milestones = tuple(self.step_milestones)
        if not all(is_num(m) and 0 < m < 1 for m in self.step_milestones):
            raise bad("step_milestones", "fractions in (0, 1) of the post-warm-up steps")
        if self.loss not in LOSSES:
            raise bad("loss", f"one of {LOSSES}")
        if not is_num(self.embed_weight) or self.embed_weight < 0:
            raise bad("embed_weight", "a number >= 0")
        if self.embed_loss not in EMBED_LOSSES:
            raise bad("embed_loss", f"one of {EMBED_LOSSES}")
        if not is_num(self.temperature) or self.temperature <= 0:
            raise bad("temperature", "a positive number")
        if not is_num(self.alpha) or not 0 <= self.alpha <= 1:
            raise bad("alpha", "a number in [0, 1]")
        if self.teacher_topk is not None:
            if not is_int(self.teacher_topk) or self.teacher_topk < 1:
                raise bad("teacher_topk", "None (full-logit KD) or an int >= 1, at most the vocabulary size")
            if self.loss != "kd":
                raise ValueError(
                    f"DistillConfig.teacher_topk={self.teacher_topk} needs loss='kd' (logit KD), got "
                    f"loss={self.loss!r}; set teacher_topk=None"
                )
        if not is_num(self.feature_weight) or self.feature_weight < 0:
            raise bad("feature_weight", "a number >= 0")
        if self.feature_loss not in EMBED_LOSSES:
            raise bad("feature_loss", f"one of {EMBED_LOSSES}")
        if isinstance(self.feature_patterns, str):
            self.feature_patterns = (self.feature_patterns,)
        self.feature_patterns = tuple(self.feature_patterns)
        if not all(isinstance(p, str) and p for p in self.feature_patterns):
            raise bad("feature_patterns", "a tuple of non-empty fnmatch patterns of module names")
        if self.feature_weight > 0 and not self.feature_patterns:
            raise ValueError(
                "DistillConfig.feature_weight > 0 needs feature_patterns, the module names whose outputs "
                "are matched, e.g. feature_patterns=('features.*', 'classifier')"
            )
        if not is_num(self.gate_lr_scale) or self.gate_lr_scale <= 0:
            raise bad("gate_lr_scale", "a positive number (the gates' learning rate is lr * gate_lr_scale)")
        if self.grad_clip is not None and (not is_num(self.grad_clip) or self.grad_clip < 0):
            raise bad("grad_clip", "a number >= 0 or None")
        if is_int(self.precision):
            self.precision = str(self.precision)
        if isinstance(self.precision, str):
            self.precision = _PRECISION_ALIASES.get(self.precision, self.precision)
        if self.precision not in PRECISIONS:
            raise bad("precision", f"a Lightning precision string, one of {PRECISIONS}")
        if not (
            self.devices == "auto"
            or (is_int(self.devices) and (self.devices >= 1 or self.devices == -1))
            or (isinstance(self.devices, str) and self.devices.replace(",", "").strip().isdigit())
            or (isinstance(self.devices, (list, tuple)) and self.devices and all(map(is_int, self.devices)))
        ):
            raise bad("devices", "an int >= 1, -1 (all), 'auto', a list of device indices or a '0,1' string")
        if self.accelerator not in ACCELERATORS:
            raise bad("accelerator", f"one of {ACCELERATORS}")
        if isinstance(self.strategy, str):
            if not self.strategy:
                raise bad("strategy", "a Lightning strategy name ('auto', 'ddp', 'ddp_spawn', 'fsdp', ...)")
        elif self.strategy is None:
            raise bad("strategy", "a Lightning strategy name or Strategy object")
        if not is_int(self.num_nodes) or self.num_nodes < 1:
            raise bad("num_nodes", "an int >= 1")
        if self.deterministic not in (True, False, "warn"):
            raise bad("deterministic", "True, False or 'warn'")
        check_seed("DistillConfig.seed", self.seed)
        if self.val_every is not None and (not is_int(self.val_every) or self.val_every < 0):
            raise bad("val_every", "an int >= 0 (0: validate only at the end) or None")
        if self.metric not in METRICS:
            raise bad("metric", f"one of {METRICS}")
        if self.log_dir is not None:
            self.log_dir = str(self.log_dir)  # accept os.PathLike
        if not is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise bad("checkpoint_every", "an int >= 0 (0: no checkpoints)")
        if self.resume is not None:
            self.resume = str(self.resume)
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
        d["step_milestones"] = list(d["step_milestones"])
        d["feature_patterns"] = list(d["feature_patterns"])
        return d
