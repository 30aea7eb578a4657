"""``distill()``: KD fine-tuning of a student against a frozen teacher, on PyTorch Lightning."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import DistillConfig
from .data import EvalLoader, TrainLoader, check_topk_cache

__all__ = ["Interrupted", "distill", "verbose"]

_QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
_QUIET_WARNINGS = (
    r".*does not have many workers.*", r".*smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
)
# Expected here whatever the verbosity: the frozen teacher is in eval mode on purpose.
_EXPECTED_WARNINGS = (
    r".*module\(s\) in eval mode at the start of training.*",
    r".*You defined a `validation_step` but have no `val_dataloader`.*",  # val_loader=None
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # inside Lightning, nothing to act on
)


def verbose() -> bool:
    """Whether third-party info messages, tips and bars show: ``INHERNET_VERBOSE=1`` (``inhernet --verbose``)."""
    return os.environ.get("INHERNET_VERBOSE", "") not in ("", "0")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped :func:`distill` after ``step`` steps; ``checkpoint`` resumes it."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"interrupted at step {step}; resume from {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


def _multi_process(config: DistillConfig) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ:
        return True
    devices = config.devices
    single = devices == 1 or (isinstance(devices, (list, tuple)) and len(devices) == 1) or devices in ("1", "0")
    return config.num_nodes > 1 or not single


def _resolve_log_dir(config: DistillConfig) -> Path:
    if config.log_dir is not None:
        path = Path(config.log_dir)
    elif _multi_process(config):
        # Every process must agree on the directory: no per-process temporary names.
        path = Path("out") / "distill"
    else:
        path = Path(tempfile.mkdtemp(prefix="inhernet-distill-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _resolve_resume(config: DistillConfig, log_dir: Path) -> str | None:
    if config.resume is None:
        earlier = sorted((log_dir / "checkpoints").glob("*.ckpt"))
        if earlier:  # a fresh run would add last-v1.ckpt beside them: which one would `resume="last"` mean?
            raise ValueError(
                f"DistillConfig.log_dir {str(log_dir)!r} holds the checkpoints of an earlier run "
                f"({', '.join(p.name for p in earlier[-3:])}): continue it with resume='last', or delete "
                f"{str(log_dir / 'checkpoints')!r} to start over"
            )
        return None
    path = log_dir / "checkpoints" / "last.ckpt" if config.resume == "last" else Path(config.resume)
    if not path.is_file():
        raise ValueError(f"DistillConfig.resume: no checkpoint at {str(path)!r}")
    return str(path)


@contextlib.contextmanager
def _sigint_to(callback: Any, enabled: bool) -> Iterator[None]:
    """While training, Ctrl-C asks ``callback`` to checkpoint and stop; a second Ctrl-C stops at once."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT) or signal.SIG_DFL  # None: not set from Python

    def handler(_signum: int, _frame: Any) -> None:
        callback.requested = True
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Silence Lightning's info messages and its warnings that don't apply here."""
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    with warnings.catch_warnings():
        for message in _EXPECTED_WARNINGS + (_QUIET_WARNINGS if enabled else ()):
            warnings.filterwarnings("ignore", message=message)
        for name in _QUIET_LOGGERS if enabled else ():
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _preserved(student: nn.Module, teacher: nn.Module) -> Iterator[None]:
    """Restore what Lightning changes on the caller's objects and process (flags, modes, devices)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    t_params = list(teacher.parameters())
    t_requires_grad = [p.requires_grad for p in t_params]
    t_mode, s_mode = teacher.training, student.training
    # Devices and dtypes as values: Lightning moves/casts the parameters in place.
    t_ref, s_ref = next(iter(t_params), None), next(student.parameters(), None)
    t_place = (t_ref.device, t_ref.dtype if t_ref.is_floating_point() else None) if t_ref is not None else None
    s_device = s_ref.device if s_ref is not None else None
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        for p, flag in zip(t_params, t_requires_grad, strict=True):
            p.requires_grad_(flag)
        teacher.train(t_mode)
        student.train(s_mode)
        if t_place is not None:
            teacher.to(device=t_place[0], dtype=t_place[1])
        if s_device is not None:
            student.to(device=s_device)  # its dtype follows `precision` ("bf16-true" leaves it bf16)


def distill(
    student: nn.Module, teacher: nn.Module, train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None = None, config: DistillConfig | None = None, *,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Fine-tune ``student`` in place by knowledge distillation from ``teacher``; return the history.

    A seeded ``lightning.Trainer`` runs ``config.steps`` optimiser steps, validates (as
    :func:`inhernet.evaluate`, across processes too), checkpoints and logs; both models get their modes,
    devices and flags back. Batches: tensors, ``(inputs, labels)`` tuples or dicts; without labels, the KD
    term alone. ``config.resume`` continues a run exactly; Ctrl-C in a single process saves
    ``<log_dir>/checkpoints/last.ckpt`` and raises :class:`Interrupted`. Checkpoints are read with
    ``torch.load``: resume only from ones you trust. Each of ``devices * num_nodes`` processes trains on
    its shard and returns the same history.

    Args:
        callbacks: extra Lightning callbacks (early stopping, monitoring...).

    Returns:
        ``{"curve": [[step, metric], ...], "train_loss": [[step, loss], ...], "steps": int,
        "sec_per_step": float, "final": {metric: value} (empty without validation), "best": [step, value]
        (with ``keep="best"``) or None, "metric": str, "log_dir": str, "checkpoint": path of last.ckpt or
        None, "is_global_zero": bool, "world_size": int}``.
    """
    config = _checked(student, teacher, config, val_loader)
    check_topk_cache(train_loader, config.teacher_topk, config.temperature)
    log_dir = _resolve_log_dir(config)
    ckpt_path = _resolve_resume(config, log_dir)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        (log_dir / "history.json").unlink(missing_ok=True)
    with _preserved(student, teacher), _quiet(not verbose()):
        return _fit(student, teacher, train_loader, val_loader, config, callbacks, log_dir, ckpt_path)


def _fit(
    student: nn.Module, teacher: nn.Module, train_loader: Iterable[Any], val_loader: Iterable[Any] | None,
    config: DistillConfig, callbacks: Sequence[Any], log_dir: Path, ckpt_path: str | None,
) -> dict[str, Any]:
    """Seed, build the module and the trainer, train (resuming from ``ckpt_path``) and return the history."""
    import lightning as L

    from .callbacks import CheckpointOnInterrupt, Stopped  # import Lightning: only when a run starts
    from .module import DistillModule

    L.seed_everything(config.seed, workers=True, verbose=False)
    student.train()  # fine-tuning mode (dropout, batch-norm updates); the caller's mode is restored
    module = DistillModule(student, teacher, config)
    history_path = log_dir / "history.json"
    module.history_path = str(history_path)
    on_interrupt = CheckpointOnInterrupt(str(log_dir / "checkpoints" / "last.ckpt"))
    trainer = _trainer(config, log_dir, [*callbacks, on_interrupt], validating=val_loader is not None)
    trainer_of = functools.partial(getattr, module, "trainer")  # picklable, for spawn-based strategies
    train = TrainLoader(train_loader, config.seed, trainer_of)
    val = EvalLoader(val_loader, config.seed, trainer_of) if val_loader is not None else None
    try:
        with _sigint_to(on_interrupt, enabled=not _multi_process(config)):
            trainer.fit(module, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt_path)
    except Stopped as stop:
        raise Interrupted(stop.step, on_interrupt.path) from None
    if module.best_state is not None:
        student.load_state_dict(module.best_state)
    history = module.history
    if "steps" not in history and history_path.exists():  # spawn-based strategy: ran in child processes
        history = json.loads(history_path.read_text())
    return _result({**history, "best": module.best}, trainer, config, log_dir)


def _checked(student: Any, teacher: Any, config: Any, val_loader: Any) -> DistillConfig:
    """``config`` (the default one for ``None``) once the arguments of :func:`distill` are checked."""
    config = DistillConfig() if config is None else config
    if not isinstance(config, DistillConfig):
        raise TypeError(f"distill: config must be a DistillConfig, got {type(config).__name__}")
    for name, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"distill: {name} must be a torch.nn.Module, got {type(model).__name__}")
    if student is teacher:
        raise ValueError("distill: student and teacher are the same object; pass a copy as the student")
    if config.keep == "best" and val_loader is None:
        raise ValueError("distill: DistillConfig.keep='best' needs a val_loader to tell the best weights")
    try:
        import lightning  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("distill() runs on PyTorch Lightning: pip install 'inhernet[train]'") from exc
    return config


def _trainer(config: DistillConfig, log_dir: Path, callbacks: Sequence[Any], validating: bool) -> Any:
    """The ``lightning.Trainer`` of a run: step-based validation and checkpoints, CSV logs in ``log_dir``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from .callbacks import ProgressLines, StepBar

    all_callbacks = list(callbacks)
    if config.checkpoint_every:  # last.ckpt, and the latest keep_checkpoints step checkpoints (by "step")
        keep = config.keep_checkpoints
        all_callbacks.append(ModelCheckpoint(
            dirpath=log_dir / "checkpoints", filename="step{step:06d}", auto_insert_metric_name=False,
            every_n_train_steps=config.checkpoint_every, save_top_k=keep, monitor="step" if keep > 0 else None,
            mode="max", save_last=True, enable_version_counter=False,
        ))
    bar = config.progress and sys.stdout.isatty()  # where Lightning draws its bars
    if config.progress:
        all_callbacks.append(StepBar() if bar else ProgressLines(max(1, config.steps // 10)))
    validation: dict[str, Any] = {"limit_val_batches": 0, "num_sanity_val_steps": 0}
    if validating:
        validation = {
            "val_check_interval": config.validation_interval,
            "check_val_every_n_epoch": None,  # count validation steps across epochs
            "num_sanity_val_steps": -1 if config.val_at_start else 0,  # full pass = the step-0 point
        }
    return L.Trainer(
        accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes, strategy=config.strategy,
        precision=config.precision, max_steps=config.steps, max_epochs=-1, deterministic=config.deterministic,
        gradient_clip_val=config.grad_clip or None, gradient_clip_algorithm="norm",
        enable_progress_bar=bar, enable_model_summary=verbose(), enable_checkpointing=bool(config.checkpoint_every),
        logger=CSVLogger(save_dir=log_dir, name="logs"), log_every_n_steps=max(1, min(50, config.steps // 20)),
        callbacks=all_callbacks, default_root_dir=log_dir,
        use_distributed_sampler=False,  # TrainLoader / EvalLoader shard the data (see data.py)
        **validation,
    )


def _result(history: dict[str, Any], trainer: Any, config: DistillConfig, log_dir: Path) -> dict[str, Any]:
    """What :func:`distill` returns, from the module's history and the finished trainer."""
    last = log_dir / "checkpoints" / "last.ckpt"
    metric = config.metric
    curve = [list(p) for p in history.get("curve", [])]
    return {
        "curve": curve,
        "train_loss": [list(p) for p in history.get("train_loss", [])],
        "steps": int(history.get("steps", trainer.global_step)),
        "sec_per_step": float(history.get("sec_per_step", float("nan"))),
        # the returned student's: the best point with keep="best"
        "final": {metric: (history.get("best") or curve[-1])[1]} if curve else {},
        "best": history.get("best"),
        "metric": metric,
        "log_dir": str(log_dir),
        "checkpoint": str(last) if last.exists() else None,
        "is_global_zero": bool(trainer.is_global_zero),
        "world_size": int(trainer.world_size),
    }
