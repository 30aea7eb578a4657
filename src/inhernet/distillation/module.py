"""``DistillModule``: the LightningModule that fine-tunes a student against a frozen teacher."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._atomic import atomic_write
from ..batches import batch_labels, batch_teacher_logits, forward_batch, lm_labels, logits_of
from ..dual import DUAL_METRICS, DualOutput, dual_metrics, pair_embeddings
from ..evaluate import batch_sums
from . import loss as losses
from .config import DistillConfig
from .defaults import default_lr

__all__ = ["DistillModule", "lr_lambda"]

_TEACHER_PREFIX = "teacher."


def lr_lambda(config: DistillConfig):
    """The learning-rate multiplier as a function of the optimiser step (for ``LambdaLR``)."""
    steps, warmup = config.steps, config.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if config.schedule == "step":
            return config.step_gamma ** sum(progress >= m for m in config.step_milestones)
        return 1.0

    return factor


def _rng_state() -> dict[str, Any]:
    """Global RNG states, as tensors and plain Python values (loadable with ``weights_only=True``)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.cpu().numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _gather_uneven(strategy: Any, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Concatenate every process's tensors (unpadded shards may differ in length by a few rows)."""
    counts = strategy.all_gather(torch.tensor([len(tensors[0])], device=tensors[0].device)).reshape(-1)
    size = int(counts.max())
    out = []
    for x in tensors:
        padded = F.pad(x, [0, 0] * (x.dim() - 1) + [0, size - len(x)])
        gathered = strategy.all_gather(padded)  # (world, size, ...)
        out.append(torch.cat([gathered[r, : int(n)] for r, n in enumerate(counts)]))
    return out


class DistillModule(L.LightningModule):
    """Student + frozen teacher (placed and cast by Lightning, but never trained, in DDP or in checkpoints).

    ``history`` (the same on every process) holds ``curve`` ``[[step, metric], ...]``, ``train_loss``
    ``[[step, loss], ...]`` (mean over processes) and the timing of the run.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig):
        super().__init__()
        self.student, self.teacher = student, teacher
        if config.lr is None:  # the student's family default, known only here
            config = dataclasses.replace(config, lr=default_lr(student, config.loss)[0])
        self.config = config
        teacher.eval().requires_grad_(False)
        named = (*teacher.named_parameters(), *teacher.named_buffers())
        self._ddp_params_and_buffers_to_ignore = [_TEACHER_PREFIX + name for name, _ in named]
        self.feature_pairs: list[tuple[str, str]] = []
        if config.feature_weight > 0:
            self.feature_pairs = losses.match_feature_names(student, teacher, config.feature_patterns)
        self.history: dict[str, Any] = {"curve": [], "train_loss": []}
        self._pending_losses: list[tuple[int, torch.Tensor]] = []
        self._val_sums: torch.Tensor | None = None
        self._val_pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._train_start: float | None = None
        self._val_time = 0.0
        self._val_start: float | None = None
        self._steps_run = 0
        self.history_path: str | None = None
        # keep="best": the best validation point [step, value] and the student's weights there (on the CPU)
        self.best: list[float] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        self.teacher.eval()  # frozen teacher: dropout off, norm statistics fixed, always
        return self

    def on_train_start(self) -> None:
        # Lightning keeps the modes modules arrive in; a student handed over in eval mode (after
        # evaluate(), inherit() or .eval()) must still train with dropout on and batch-norm updating.
        self.train()
        self._train_start = time.perf_counter()
        self._val_time, self._steps_run = 0.0, 0

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.config
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        # Weights of 2+ dimensions are decayed, biases and norms not.
        groups: list[dict[str, Any]] = []
        for decay, weight_decay in ((True, cfg.weight_decay), (False, 0.0)):
            params = [p for p in trainable if (p.ndim > 1) == decay]
            if params:
                groups.append({"params": params, "weight_decay": weight_decay, "lr": cfg.lr})
        if not groups:
            raise ValueError("distill: the student has no trainable parameters (all have requires_grad=False)")
        if cfg.optimizer == "adamw":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        else:
            optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        cfg = self.config
        precomputed = batch_teacher_logits(batch)
        with losses.FeatureCapture(self.student, [s for s, _ in self.feature_pairs]) as s_cap:
            student_out = forward_batch(self.student, batch)
        teacher_out = None  # the teacher runs live for feature matching, or when the batch carries no outputs
        if self.feature_pairs or not isinstance(precomputed, (torch.Tensor, losses.TeacherTopK)):
            with losses.FeatureCapture(self.teacher, [t for _, t in self.feature_pairs]) as t_cap, torch.no_grad():
                teacher_out = forward_batch(self.teacher, batch)
        if cfg.loss == "contrastive":
            if teacher_out is None:  # per-example embeddings, packed by precompute_teacher_logits
                teacher_out = DualOutput.unpack(precomputed)
            loss = losses.contrastive_kd_loss(
                student_out, teacher_out, cfg.temperature, cfg.alpha, cfg.embed_weight, cfg.embed_loss
            )
        else:
            loss = self._kd_loss(batch, logits_of(student_out), precomputed, teacher_out)
        if self.feature_pairs:
            teacher_features = {s: t_cap.features[t] for s, t in self.feature_pairs}
            f_loss = losses.feature_loss(s_cap.features, teacher_features, cfg.feature_loss)
            self.log("feature_loss", f_loss.detach(), on_step=True, on_epoch=False, batch_size=1)
            loss = loss + cfg.feature_weight * f_loss

        mean_loss = self.trainer.strategy.reduce(loss.detach().clone(), reduce_op="mean")
        self._pending_losses.append((self.trainer.global_step + 1, mean_loss))
        self.log("train_loss", mean_loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=1)
        return loss

    def _kd_loss(
        self, batch: Any, student_logits: torch.Tensor, precomputed: Any, teacher_out: Any
    ) -> torch.Tensor:
        """Logit KD against the live teacher's logits, else the precomputed ones or top-k cache."""
        cfg = self.config
        cached = precomputed.logprobs.shape[-1] if isinstance(precomputed, losses.TeacherTopK) else None
        if cached is not None and cfg.teacher_topk != cached:
            raise ValueError(
                f"distill: the batches carry the teacher's top-{cached} tokens but "
                f"DistillConfig.teacher_topk is {cfg.teacher_topk}; set it to {cached}"
            )
        teacher = precomputed if teacher_out is None else logits_of(teacher_out).detach()
        if cfg.teacher_topk is not None and not isinstance(teacher, losses.TeacherTopK):
            teacher = losses.teacher_topk(teacher, cfg.teacher_topk, cfg.temperature)  # as from a cache
        labels = lm_labels(batch) if student_logits.dim() == 3 else batch_labels(batch)
        kd = losses.topk_kd_loss if isinstance(teacher, losses.TeacherTopK) else losses.kd_loss
        return kd(student_logits, teacher, labels, cfg.temperature, cfg.alpha)

    def _flush_losses(self) -> None:
        if self._pending_losses:
            values = torch.stack([v for _, v in self._pending_losses]).float().cpu().tolist()
            self.history["train_loss"] += [[s, v] for (s, _), v in zip(self._pending_losses, values, strict=True)]
            self._pending_losses.clear()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._steps_run += 1
        # Validate at the last step too, whatever val_every is (Lightning validates when asked to stop).
        if self.trainer.max_steps > 0 and self.trainer.global_step >= self.trainer.max_steps:
            self.trainer.should_stop = True

    def on_validation_start(self) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self) -> None:
        if self._val_start is not None and not self.trainer.sanity_checking:
            self._val_time += time.perf_counter() - self._val_start
        self._val_start = None

    def on_validation_epoch_start(self) -> None:
        dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        self._val_sums = torch.zeros(2, dtype=dtype, device=self.device)
        self._val_pairs = []

    def _dual_metric(self) -> float:
        if not self._val_pairs:
            raise ValueError("distill: the validation loader yielded no labelled examples")
        image, text, labels = (torch.cat(parts) for parts in zip(*self._val_pairs, strict=True))
        self._val_pairs = []
        if self.trainer.world_size > 1:
            image, text, labels = _gather_uneven(self.trainer.strategy, image, text, labels)
        return dual_metrics(image, text, labels)[self.config.metric]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.config.metric in DUAL_METRICS:  # its metrics rank every pair of the split against every other
            self._val_pairs.append(pair_embeddings(self.student, batch))
            return
        logits = logits_of(forward_batch(self.student, batch)).float()
        labels = lm_labels(batch) if self.config.metric == "perplexity" else batch_labels(batch)
        if labels is None:
            raise ValueError(
                "distill: validation needs labelled batches: (inputs, labels) tuples or dicts with 'labels'"
            )
        assert self._val_sums is not None
        total, count = batch_sums(logits, labels, self.config.metric)
        self._val_sums[0] += total.to(self._val_sums.dtype)
        self._val_sums[1] += count

    def on_validation_epoch_end(self) -> None:
        metric = self.config.metric
        if metric in DUAL_METRICS:
            value = self._dual_metric()
        else:
            assert self._val_sums is not None
            total, count = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum").cpu().tolist()
            if count == 0:
                raise ValueError("distill: the validation loader yielded no labelled examples")
            value = total / count if metric == "accuracy" else math.exp(total / count)
        step = int(self.trainer.global_step)
        self.history["curve"] = [p for p in self.history["curve"] if p[0] != step] + [[step, value]]
        self._flush_losses()
        # A resumed run re-validates its first step before training: not a point of an uninterrupted run.
        if self.config.keep == "best" and (step == 0 or not self.trainer.sanity_checking):
            self._update_best(step, value)
        if not self.trainer.sanity_checking:
            self.log(f"val_{metric}", value, sync_dist=True)

    def _update_best(self, step: int, value: float) -> None:
        """Keep the weights of the best validation point so far (ties go to the later, more trained one)."""
        lower_is_better = self.config.metric == "perplexity"
        if self.best is not None and (value > self.best[1] if lower_is_better else value < self.best[1]):
            return
        self.best = [step, value]
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.student.state_dict().items()}

    def on_train_end(self) -> None:
        self._flush_losses()
        self.history["steps"] = int(self.trainer.global_step)
        # Wall time of the training steps of this run (data loading included, validation excluded).
        wall = time.perf_counter() - (self._train_start or time.perf_counter()) - self._val_time
        self.history["sec_per_step"] = wall / max(1, self._steps_run)

    def on_fit_end(self) -> None:
        if self.history_path and self.trainer.is_global_zero:
            # For spawn-based strategies, whose main process does not see this process's memory.
            atomic_write(self.history_path, json.dumps(self.history))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(_TEACHER_PREFIX)]:
            del state[key]
        self._flush_losses()
        checkpoint["inhernet"] = {
            "history": {"curve": self.history["curve"], "train_loss": self.history["train_loss"]},
            "rng": _rng_state(), "config": self.config.to_dict(),
        }
        if self.best is not None:
            checkpoint["inhernet"]["best"] = {"point": self.best, "state": self.best_state}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.setdefault("state_dict", {})
        # The frozen teacher is not in the checkpoint: load it from the live module (strict loading).
        for key, value in self.teacher.state_dict().items():
            state.setdefault(_TEACHER_PREFIX + key, value)
        saved = checkpoint.get("inhernet", {})
        if "history" in saved:
            self.history = {key: [list(p) for p in saved["history"][key]] for key in ("curve", "train_loss")}
        if "rng" in saved:
            _set_rng_state(saved["rng"])
        if "best" in saved:
            self.best, self.best_state = list(saved["best"]["point"]), saved["best"]["state"]
