"""Lightning callbacks of :func:`inhernet.distill`: progress (a bar or lines) and a checkpoint on Ctrl-C."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepBar(TQDMProgressBar):
    """One bar over the run's optimiser steps: Lightning's counts epochs (``Epoch 0/-2`` when training by steps)."""

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # once per run, not per epoch of the loader
            bar.reset(total=trainer.max_steps)
            bar.update(trainer.global_step)  # a resumed run starts where it stopped
            bar.set_description("train")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *_: Any) -> None:
        self.train_progress_bar.update(trainer.global_step - self.train_progress_bar.n)
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)

    def on_train_epoch_end(self, *_: Any) -> None:
        pass  # the bar spans the epochs

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the CSV logger's version: not news
        return metrics


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


class ProgressLines(L.Callback):
    """Where the run is, as one line on stderr every ``every`` steps and at the end (for logs, not terminals)."""

    def __init__(self, every: int):
        self.every = every
        self._start, self._first = 0.0, 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start, self._first = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *_: Any) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if not trainer.is_global_zero or (step % self.every and step != total):
            return
        per_step = (time.perf_counter() - self._start) / max(1, step - self._first)
        parts = [f"step {step}/{total}"]
        loss = trainer.callback_metrics.get("train_loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        curve = pl_module.history["curve"]
        if curve:
            parts.append(f"{pl_module.config.metric} {curve[-1][1]:.4f} at step {curve[-1][0]}")
        parts.append(f"{per_step:.2f} s/step, {_duration(per_step * (total - step))} left")
        print(", ".join(parts), file=sys.stderr, flush=True)


class Stopped(Exception):
    """Ends ``trainer.fit`` from a callback (Lightning turns a KeyboardInterrupt into ``sys.exit(1)``)."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


class CheckpointOnInterrupt(L.Callback):
    """Once ``requested`` (by the SIGINT handler), save ``path`` at the end of the step, like
    ``ModelCheckpoint`` (so resuming from it is exact), and stop the run."""

    def __init__(self, path: str):
        self.path = path
        self.requested = False

    def on_train_batch_end(self, trainer: Any, *_: Any) -> None:
        if self.requested:
            trainer.save_checkpoint(self.path)
            raise Stopped(int(trainer.global_step))
