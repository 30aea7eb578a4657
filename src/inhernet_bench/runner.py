"""Run the benchmark methods on a preset and collect the contract JSON (see docs/design.md, "Benchmark methods")."""

from __future__ import annotations

import copy
import gc
import hashlib
import inspect
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from inhernet.costs import count_macs
from inhernet.deploy import merge_experts
from inhernet.distillation import DistillConfig, distill, precompute_teacher_logits, precompute_teacher_topk
from inhernet.dual import DUAL_METRICS
from inhernet.evaluate import evaluate
from inhernet.experimental import ExperimentalConfig
from inhernet.experimental.distillation import ExperimentalDistillConfig
from inhernet.layers import InherBlock
from inhernet_bench.baselines import MethodContext, build_student
from inhernet_bench.baselines.methods import MATCHES, METHODS
from inhernet_bench.baselines.prune import IMPORTANCES, default_importance
from inhernet_bench.parts import Parts
from inhernet_bench.presets.registry import PRESETS, Preset, get_preset
from inhernet_bench.summary import compare_with_student, other_metrics, summarise
from inhernet_bench.topk_store import hash_tensor, stored_teacher_topk

__all__ = ["TUNE_SHARE", "BenchConfig", "run_bench", "teacher_digest"]

#: the KD recipe of every row (``DistillConfig``'s defaults, kept here because every part's fingerprint
#: names them): a run that wants others passes ``distill_overrides={"temperature": ..., "alpha": ...}``
KD_TEMPERATURE, KD_ALPHA = 4.0, 0.9
#: the share of a run's steps each lr-tuning run trains for (issue 27: tuning runs of 9-11% of the schedule
#: picked lrs that a full run would not)
TUNE_SHARE = 0.25


@dataclass
class BenchConfig:
    """What ``run_bench`` runs. ``steps`` defaults to one epoch of the preset's training split."""

    preset: str = "mnist-cnn"
    #: a fraction or count of the teacher's parameters or, with ``match="macs"``, of its MACs; with
    #: ``match="latency"`` a fraction of its measured latency
    budget: float | int = 0.25
    #: size every baseline to at least the InherNet's parameters ("params"), MACs ("macs") or measured
    #: latency ("latency": of the deployed forms, on the first calibration batch; see
    #: :mod:`inhernet_bench.baselines.methods`)
    match: Literal["params", "macs", "latency"] = "params"
    #: experts of the ``inhernet`` row (and inhernet-plain); ``None``: the teacher family's default
    experts: int | None = None
    seeds: Sequence[int] = (0, 1, 2)
    #: KD steps; ``None``: one epoch of the training examples (or ``epochs`` of them)
    steps: int | None = None
    #: instead of ``steps``: this many passes over the whole training split
    epochs: int | None = None
    batch_size: int = 128
    #: the learning rate of every method, unless ``tune_lr``
    lr: float = 1e-3
    #: ``None``: the preset's own list (its ``methods``). The InherNet reference is built (not trained)
    #: even when it is not listed: the baselines are sized from it.
    methods: Sequence[str] | None = None
    #: the method whose model sizes the baselines: ``"inhernet"``, or another that builds an InherNet, e.g.
    #: ``"inhernet-prune"`` where a latency budget is out of reach of rank cuts alone
    reference: str = "inhernet"
    calib_size: int = 1000
    curve_points: int = 10
    curve_examples: int = 2000
    progress: bool = True
    distill_overrides: dict[str, Any] = field(default_factory=dict)
    #: ``InherConfig`` options of every InherNet row, over the family's defaults (e.g. ``{"drop_blocks": 0.9}``);
    #: a method's own options (``inhernet-layerdrop``'s ``drop_blocks``, ``svd-kd``'s ``init``) still win
    inherit_overrides: dict[str, Any] = field(default_factory=dict)
    #: give every method its best learning rate of ``lr_grid``, each scored after ``tune_steps`` steps
    #: on a validation split carved from the end of the training split (never the test split)
    tune_lr: bool = False
    lr_grid: Sequence[float] = (3e-4, 1e-3, 3e-3)
    #: ``None``: :data:`TUNE_SHARE` of the steps (at least 10, at most all of them)
    tune_steps: int | None = None
    #: while a method's best lr is the grid's smallest or largest, add the next lr beyond it (one grid
    #: step, the ratio of the two lrs at that edge) and tune again, at most this many times
    lr_extensions: int = 3
    #: ``"cosine"``: every run decays its lr to 0 (DistillConfig's recipe); ``"constant"``: every run, tuning
    #: runs included, keeps its lr and ends with the weights of its best validation point (a method is then
    #: judged where it converged, not on a cosine tail); needs ``curve_split="validation"``
    schedule: Literal["cosine", "constant"] = "cosine"
    #: with ``schedule="constant"``: stop a run after this many validation points without a better one
    #: (``None``: run every step)
    patience: int | None = None
    #: examples of the validation split (at most a fifth of the training split); disjoint from the
    #: examples the tuning runs train on
    val_examples: int = 2000
    #: write each (method, seed) run, and each method's tuning, as its own JSON here when it finishes;
    #: a rerun of the same configuration skips what is already written and assembles the result
    part_dir: str | os.PathLike[str] | None = None
    #: with ``part_dir``: save each run's training state every this many steps under
    #: ``<part_dir>/<method>--seed<seed>.train/`` and continue an interrupted run from its last checkpoint
    #: (the folder is removed once the run's part is written); 0: no checkpoints. Not in the fingerprint:
    #: a resumed run matches an uninterrupted one.
    checkpoint_every: int = 0
    #: channel importance of ``prune-kd``: ``"l2"`` (magnitude) or ``"taylor"`` (gradient x weight on
    #: the first calibration batch); ``None``: the teacher family's (taylor for causal LMs, l2 otherwise)
    prune_importance: str | None = None
    #: measure on the preset's whole test split where its default test loader is a subset (its
    #: ``full_test`` data options; e.g. fashion-effnet: 10,000 images instead of 500)
    full_test: bool = False
    #: where the learning curve and the zero-shot score are measured: ``"test"``, or ``"validation"`` (the
    #: validation split of ``val_examples``, which the runs then never train on): the test split is then read
    #: once per run, for its final score (and once more for the experts-merged score of a gated model)
    curve_split: Literal["test", "validation"] = "test"
    #: with ``match="latency"``: what times layers and models (a :class:`inhernet.deploy.costs.LatencyCosts`);
    #: default a :class:`~inhernet.deploy.CostTable` on the teacher's device. Not part of the fingerprint.
    costs: Any = None

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        self.seeds = tuple(self.seeds)
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"give steps= or epochs=, not both (got steps={self.steps}, epochs={self.epochs})")
        for name in ("steps", "epochs", "tune_steps", "val_examples", "patience"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) or (
            self.checkpoint_every < 0
        ):
            raise ValueError(f"checkpoint_every must be an int >= 0 (0: no checkpoints), got {self.checkpoint_every!r}")
        if self.checkpoint_every and self.part_dir is None:
            raise ValueError("checkpoint_every needs part_dir: the checkpoints are kept beside the parts")
        if self.curve_split not in ("test", "validation"):
            raise ValueError(f"curve_split must be 'test' or 'validation', got {self.curve_split!r}")
        self._check_schedule()
        if self.match not in MATCHES:
            raise ValueError(f"match must be one of {', '.join(map(repr, MATCHES))}, got {self.match!r}")
        if self.match == "latency" and (
            isinstance(self.budget, bool) or not isinstance(self.budget, float) or not 0 < self.budget <= 1
        ):
            raise ValueError(
                f"with match='latency' the budget is a fraction in (0, 1] of the teacher's measured latency, "
                f"e.g. 0.5; got {self.budget!r}"
            )
        if self.methods is not None:
            self.methods = tuple(self.methods)
            if not self.methods:
                raise ValueError("methods must name at least one method (or be None: the preset's list)")
        self.inherit_overrides = dict(self.inherit_overrides)
        sized_elsewhere = {"budget", "macs", "latency", "rank", "experts", "seed"} & set(self.inherit_overrides)
        if sized_elsewhere:
            raise ValueError(
                f"inherit_overrides cannot set {sorted(sized_elsewhere)}: the bench sizes every row from budget=, "
                "match=, experts= and seeds="
            )
        unknown = set(self.inherit_overrides) - {f.name for f in fields(ExperimentalConfig)}
        if unknown:
            raise ValueError(f"inherit_overrides: {sorted(unknown)} are not InherConfig options")
        if self.reference not in METHODS:
            raise ValueError(f"reference must be one of the methods {sorted(METHODS)}, got {self.reference!r}")
        if self.prune_importance is not None and self.prune_importance not in IMPORTANCES:
            raise ValueError(
                f"prune_importance must be one of {IMPORTANCES} or None (the family's), got {self.prune_importance!r}"
            )
        self.lr_grid = tuple(float(v) for v in self.lr_grid)
        if self.tune_lr and (len(set(self.lr_grid)) < 3 or min(self.lr_grid) <= 0):
            raise ValueError(
                f"lr_grid must hold at least three distinct learning rates > 0, e.g. (3e-4, 1e-3, 3e-3); "
                f"got {self.lr_grid}"
            )

    def _check_schedule(self) -> None:
        if isinstance(self.lr_extensions, bool) or not isinstance(self.lr_extensions, int) or self.lr_extensions < 0:
            raise ValueError(f"lr_extensions must be an int >= 0 (0: the grid as given), got {self.lr_extensions!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.schedule == "constant" and self.curve_split != "validation":
            raise ValueError(
                "schedule='constant' keeps each run's best validation point: it needs curve_split='validation' "
                "(the test split never chooses a checkpoint)"
            )
        if self.patience is not None and self.schedule != "constant":
            raise ValueError(f"patience={self.patience} stops on validation: it needs schedule='constant'")

    def tuning_steps(self, steps: int) -> int:
        """Steps of each tuning run for a schedule of ``steps``: ``tune_steps``, else :data:`TUNE_SHARE` of
        them (at least 10, at most ``steps``)."""
        return self.tune_steps or min(steps, max(10, math.ceil(TUNE_SHARE * steps)))

    @property
    def temperature(self) -> float:
        """The KD temperature of every row: ``distill_overrides["temperature"]``, else :data:`KD_TEMPERATURE`."""
        return self.distill_overrides.get("temperature", KD_TEMPERATURE)

    @property
    def alpha(self) -> float:
        """The KD term's weight of every row: ``distill_overrides["alpha"]``, else :data:`KD_ALPHA`."""
        return self.distill_overrides.get("alpha", KD_ALPHA)

    def fingerprint(self, steps: int, teacher: str | None = None) -> dict[str, Any]:
        """What a part written under this configuration depends on (besides the method's recipe);
        ``teacher`` is the teacher's :func:`teacher_digest` (a teacher fitted on another machine, or
        before a fix to its recipe, makes other parts)."""
        fp: dict[str, Any] = {
            "preset": self.preset, "budget": self.budget, "match": self.match, "experts": self.experts,
            "steps": steps, "epochs": self.epochs, "batch_size": self.batch_size, "temperature": self.temperature,
            "alpha": self.alpha, "calib_size": self.calib_size, "curve_points": self.curve_points,
            "curve_examples": self.curve_examples, "distill_overrides": dict(self.distill_overrides),
            "prune_importance": self.prune_importance,
        }
        if self.reference != "inhernet":  # only when set: parts written before the option existed stay valid
            fp["reference"] = self.reference
        topk = get_preset(self.preset).teacher_topk if self.preset in PRESETS else None
        if topk is not None:  # a sparse teacher is another loss; parts of other presets stay valid
            fp["teacher_topk"] = topk
        if self.inherit_overrides:  # only when set: parts written before the option existed stay valid
            fp["inherit_overrides"] = dict(self.inherit_overrides)
        if self.full_test:  # only when set: parts written before the option existed stay valid
            fp["full_test"] = True
        if self.curve_split != "test":  # only when set: parts written before the option existed stay valid
            fp["curve_split"], fp["val_examples"] = self.curve_split, self.val_examples
        if self.schedule != "cosine":  # only when set: parts written before the option existed stay valid
            fp["schedule"], fp["patience"] = self.schedule, self.patience
        if self.tune_lr:
            # the tuning runs' resolved length: parts tuned by the shorter runs of old are not reused
            fp["lr_grid"], fp["tune_steps"] = list(self.lr_grid), self.tuning_steps(steps)
            fp["val_examples"] = self.val_examples
            if self.lr_extensions:  # only when set: parts tuned on a fixed grid stay valid with lr_extensions=0
                fp["lr_extensions"] = self.lr_extensions
        else:
            fp["lr"] = self.lr
        if teacher is not None:
            fp["teacher"] = teacher
        return json.loads(json.dumps(fp, default=str))


def teacher_digest(model: nn.Module) -> str:
    """A short SHA-256 of ``model``'s state dict (names, dtypes, shapes and bytes): which teacher a part
    was trained from."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        hash_tensor(digest, name, tensor)
    return digest.hexdigest()[:16]


def first_example(batch: Any) -> Any:
    """One example of an input batch (a tensor or a dict of tensors), e.g. to count MACs per example; any
    other batch as it is."""
    if isinstance(batch, torch.Tensor):
        return batch[:1]
    if isinstance(batch, Mapping):
        return {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


def teacher_training_set(
    preset: Any, teacher: nn.Module, dataset: Any, temperature: float, digest: str | None = None,
    progress: bool = False,
) -> Any:
    """``dataset`` carrying what ``preset`` keeps of the teacher: its top-k tokens (``preset.teacher_topk``,
    at the KD ``temperature``), its logits (``cache_teacher``), or nothing (the teacher runs live). Given
    the teacher's ``digest`` (:func:`teacher_digest`), a top-k cache is kept on disk for the next process
    (:mod:`inhernet_bench.topk_store`). ``progress`` shows a bar over a top-k pass."""
    if preset.teacher_topk is not None:
        if digest is not None:
            return stored_teacher_topk(teacher, digest, dataset, preset.teacher_topk, temperature, progress)
        return precompute_teacher_topk(teacher, dataset, preset.teacher_topk, temperature, progress=progress)
    return precompute_teacher_logits(teacher, dataset) if preset.cache_teacher else dataset


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print, preset: Preset | None = None) -> dict[str, Any]:
    """Build, distil and evaluate every method for every seed; returns the contract JSON dict.

    Training uses the first ``steps * batch_size`` training examples (all of them with ``epochs``),
    with the teacher's logits computed once. The final metric is measured on the preset's whole test
    split, the learning curve on the first ``curve_examples`` examples of ``cfg.curve_split``. For one seed
    every method sees the same batches in the same order. With ``tune_lr`` each method first gets its learning rate (see
    :class:`BenchConfig`); with ``part_dir`` every finished run is kept and reused (see :class:`Parts`).
    ``preset``: run on this preset instead of the registered ``cfg.preset``, which then only names it (a
    user's model and data: :mod:`inhernet_bench.compare`).
    """
    start = time.perf_counter()
    bench = _Bench(cfg, log, preset)
    for seed in bench.cfg.seeds:
        for name in bench.methods:
            bench.run(name, seed)
    return bench.result(start)


#: what a row's summary adds, in this order, where its student has it: its plan's ranks, its deployed
#: latency (match="latency"), the share of channels an InherConfig(prune=...) method removed, and
#: inherit's measured latency checks
_ROW_EXTRAS = ("ranks", "latency_ms", "pruned_share", "latency_checks")


class _Bench:
    """One ``run_bench``: the teacher, data and parts it sets up, and what each (method, seed) run adds."""

    def __init__(self, cfg: BenchConfig, log: Callable[[str], None], preset: Preset | None = None) -> None:
        preset = preset or get_preset(cfg.preset)
        self.methods = tuple(cfg.methods or preset.methods)
        for name in self.methods:
            if name in preset.excluded:
                raise ValueError(f"preset {preset.name!r} leaves out {name!r}: {preset.excluded[name]}")
        self.preset, self.log, self.teacher = preset, log, preset.teacher()
        if cfg.prune_importance is None:  # resolved before the fingerprint: parts name what prune-kd used
            cfg = replace(cfg, prune_importance=default_importance(self.teacher))
        self.cfg, self.calib = cfg, preset.calib(cfg.calib_size)
        train, self.test = preset.data(cfg.batch_size, **(preset.full_test if cfg.full_test else {}))
        n_train = len(train.dataset)
        on_val = cfg.curve_split == "validation"
        held = _validation_indices(preset, cfg.val_examples, n_train) if cfg.tune_lr or on_val else []
        self.n_val = len(held)
        # the runs never train on a preset's own validation split, nor on any validation split a curve is on
        kept_out = set(held) if on_val or preset.validation is not None else set()
        #: the training examples the runs draw from, in order (the tuning runs: the first of them)
        self.fit = [i for i in range(n_train) if i not in kept_out] if kept_out else range(n_train)
        n_fit = len(self.fit)
        self.val = DataLoader(Subset(train.dataset, held), batch_size=max(cfg.batch_size, 256))
        # epochs: whole passes over the training split, at the runner's own batch size
        epoch = -(-n_fit // cfg.batch_size) if kept_out else len(train)
        self.steps = cfg.epochs * -(-n_fit // cfg.batch_size) if cfg.epochs is not None else cfg.steps or epoch
        self.train, self.train_n, self._training_set = train, min(n_fit, self.steps * cfg.batch_size), None
        self.metric = preset.metric
        self.higher = self.metric != "perplexity"
        self.example = first_example(self.calib[0])
        self.teacher_scores = evaluate(self.teacher, self.test, self.metric)
        log(f"teacher: {_params(self.teacher):,} params, {self.metric} {self.teacher_scores[self.metric]:.4f}; "
            f"{self.steps} KD steps")
        self.digest = teacher_digest(self.teacher)
        fingerprint = cfg.fingerprint(self.steps, self.digest)
        if preset.validation is not None and held:  # only then: parts of other presets stay valid
            fingerprint["validation"] = "preset"
        self.parts = Parts(cfg.part_dir, fingerprint) if cfg.part_dir is not None else None
        self.tuner = _Tuner(self) if cfg.tune_lr else None
        self.runs: dict[str, list[dict[str, Any]]] = {m: [] for m in self.methods}
        self.sizes: dict[str, tuple[int, int]] = {}
        #: what each row adds to its summary (:data:`_ROW_EXTRAS`), from its last seed's student
        self.extras: dict[str, dict[str, Any]] = {m: {} for m in self.methods}
        self.tuned: dict[str, dict[str, Any]] = {}
        self.contexts: dict[int, MethodContext] = {}

    def training_set(self) -> Any:
        """The training examples, made on first use (a run assembled from parts trains nothing)."""
        if self._training_set is None:
            subset = Subset(self.train.dataset, self.fit[: self.train_n])
            # The data is fixed, so the teacher runs once per example, not once per method, seed and step.
            self._training_set = teacher_training_set(
                self.preset, self.teacher, subset, self.cfg.temperature, self.digest, self.cfg.progress
            )
        return self._training_set

    def context(self, seed: int) -> MethodContext:
        """Seed ``seed``'s :class:`MethodContext`, its reference built (once per seed)."""
        if seed not in self.contexts:
            cfg = self.cfg
            # one cost table for every seed: the teacher is timed once, so every seed gets the same plan
            costs = next(iter(self.contexts.values())).costs if self.contexts else cfg.costs
            ctx = MethodContext(
                self.teacher, cfg.budget, cfg.experts, self.calib, seed, self.preset.student, match=cfg.match,
                extras={"prune_importance": cfg.prune_importance}, costs=costs,
                inherit_overrides=cfg.inherit_overrides,
            )
            hint = "the reference must build an InherNet model from the budget, e.g. 'inhernet' or 'inhernet-prune'"
            try:
                ctx.reference = build_student(cfg.reference, ctx)
            except ValueError as err:  # e.g. a budget that rank cuts alone cannot reach
                raise ValueError(f"reference={cfg.reference!r} could not be built: {err}; {hint}") from err
            if not hasattr(ctx.reference, "inhernet_plan"):
                raise ValueError(f"reference={cfg.reference!r} builds no InherNet model; {hint}")
            self.contexts[seed] = ctx
        return self.contexts[seed]

    def build(self, name: str, seed: int) -> nn.Module:
        """Method ``name``'s student for ``seed``, its size and plan recorded for the summary."""
        ctx = self.context(seed)
        student = ctx.reference if name == self.cfg.reference else build_student(name, ctx)
        self.sizes[name] = (_params(student), count_macs(student, self.example))
        extras = self.extras[name]
        if self.cfg.match == "latency":
            extras["latency_ms"] = ctx.size(student) / 1e6  # ns of the deployed form
        plan = getattr(student, "inhernet_plan", None)
        if plan is not None:
            extras["ranks"] = plan.ranks()
            if plan.prune is not None:
                extras["pruned_share"] = plan.prune.ratio
            if plan.latency_checks is not None:
                extras["latency_checks"] = plan.latency_checks
        return student

    def run(self, name: str, seed: int) -> None:
        """Method ``name`` at ``seed``: its part if one is written, else tuned (once), trained and scored."""
        student = self.build(name, seed)
        recipe = _recipe(name, student, self.sizes[name])
        done = self.parts.run(name, seed, recipe) if self.parts is not None else None
        if done is not None:
            self.runs[name].append(done)
            if "lr_scores" in done:
                self.tuned[name] = {k: done[k] for k in ("lr", *_TUNING_KEYS) if k in done}
            self.log(f"seed {seed} {name:<22} part found: final {done['final']:.4f} (skipped)")
            return
        lr = self.lr(name, seed, student)
        if name == self.cfg.reference:
            # the reference must stay untrained: the other methods are sized (and inhernet-random-init
            # takes its plan) from it
            student = copy.deepcopy(student)
        run = self.train_and_score(name, seed, student, recipe, lr)
        # Lightning's trainer and module refer to each other: free each run's cycle (and its tensors) now,
        # not at a rare full collection (a 10-run fashion-effnet bench grew to 24 GB and was OOM-killed)
        del student
        gc.collect()
        merged = f"  merged {run['merged']:.4f}" if "merged" in run else ""
        self.log(f"seed {seed} {name:<22} {self.sizes[name][0]:>10,} params  lr {lr:g}  zero-shot "
                 f"{run['zero_shot']:.4f}  final {run['final']:.4f}{merged}  {run['sec_per_step'] * 1000:.1f} "
                 f"ms/step{_resident()}")

    def lr(self, name: str, seed: int, student: nn.Module) -> float:
        """Method ``name``'s learning rate: ``cfg.lr``, or with ``tune_lr`` its tuned one (from its part if
        written; tuned on :data:`TUNE_SEED`'s student)."""
        if self.tuner is None:
            return self.cfg.lr
        if name not in self.tuned:
            tune_student = student if seed == TUNE_SEED else build_student(name, self.context(TUNE_SEED))
            tune_recipe = _recipe(name, tune_student, self.sizes[name])
            parts = self.parts
            written = parts.tune(name, tune_recipe) if parts is not None else None
            self.tuned[name] = written or self.tuner.tune(name, tune_student)
            if parts is not None and written is None:  # a reused part stays as committed
                parts.write_tune(name, tune_recipe, self.tuned[name])
        return self.tuned[name]["lr"]

    def train_and_score(
        self, name: str, seed: int, student: nn.Module, recipe: dict[str, Any], lr: float
    ) -> dict[str, Any]:
        """Distil and score one run; record it (and write its part, its checkpoints removed)."""
        cfg, parts = self.cfg, self.parts
        resume = parts.checkpoints(name, seed, recipe, lr, cfg.checkpoint_every, self.log) if cfg.checkpoint_every else {}
        run = self.distil_and_score(student, seed, lr, resume)
        if name in self.tuned:
            run.update({k: self.tuned[name][k] for k in _TUNING_KEYS if k in self.tuned[name]})
        self.runs[name].append(run)
        if parts is not None:
            parts.write_run(name, seed, recipe, run)
            shutil.rmtree(parts.train_dir(name, seed), ignore_errors=True)
        return run

    def distil_and_score(
        self, student: nn.Module, seed: int, lr: float, resume: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Distil ``student`` for the bench's steps at ``lr`` and measure it: one run's record. ``resume``:
        the ``DistillConfig`` checkpoint options of :meth:`Parts.checkpoints`, if any."""
        cfg, test, metric, steps, teacher, calib = self.cfg, self.test, self.metric, self.steps, self.teacher, self.calib
        train = DataLoader(
            self.training_set(), batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        constant = {"keep": "best"} if cfg.schedule == "constant" else {}
        dcfg = _distill_config(
            self, seed, steps, lr, val_every=max(1, steps // cfg.curve_points), progress=cfg.progress,
            **constant, **(resume or {}),
        )
        on_test = cfg.curve_split == "test"
        curve_set = _Head(test if on_test else self.val, cfg.curve_examples, cfg.batch_size)
        # A curve over the whole test split already measures the zero-shot and final metric
        # (validation follows evaluate()'s semantics): don't pay for those evaluations twice.
        whole = on_test and len(curve_set) >= len(test) and dcfg.val_at_start
        zero_shot = evaluate(student, test, metric)[metric] if on_test and not whole else None
        history = distill(student, teacher, train, curve_set, dcfg, callbacks=self.stopping())
        points = {int(s): v for s, v in history["curve"]}
        zero_shot = points.get(0) if zero_shot is None else zero_shot  # off the test split: validation's
        final_point = points.get(history["steps"]) if whole else None
        # A dual encoder's other metrics (its recalls) come with a full evaluation only.
        needs_eval = final_point is None or metric in DUAL_METRICS
        scores = evaluate(student, test, metric) if needs_eval else {metric: final_point}
        run = {
            "seed": seed, "lr": lr, "zero_shot": zero_shot, "final": scores[metric], "steps": history["steps"],
            "sec_per_step": history["sec_per_step"], "curve": history["curve"], "metrics": _others(scores, metric),
            **({"best": history["best"]} if constant else {}),
        }
        if _has_gates(student):
            # The deployment option: experts folded into one by their mean gate on the calibration data.
            run["merged"] = evaluate(merge_experts(copy.deepcopy(student), calib), test, metric)[metric]
        return run

    def stopping(self) -> list[Any]:
        """The Lightning callbacks that end a run early: an early stop on validation with ``patience``."""
        if self.cfg.patience is None:
            return []
        from lightning.pytorch.callbacks import EarlyStopping  # Lightning loads only when a run trains

        return [EarlyStopping(
            f"val_{self.metric}", patience=self.cfg.patience, mode="max" if self.higher else "min",
            check_on_train_epoch_end=False,
        )]

    def summaries(self) -> list[dict[str, Any]]:
        """Each method's summary row, compared with the kd-student's; with ``schedule="constant"`` each
        seed's kept (best validation) ``[step, value]`` as ``best_points``."""
        rows = [
            {**summarise(name, self.runs[name], self.sizes[name], self.higher),
             **{key: self.extras[name][key] for key in _ROW_EXTRAS if key in self.extras[name]},
             **({"best_points": [r["best"] for r in self.runs[name]]} if self.cfg.schedule == "constant" else {})}
            for name in self.methods
        ]
        compare_with_student(rows, self.higher)
        return rows

    def result(self, start: float) -> dict[str, Any]:
        """The contract JSON dict; ``start``: the run's :func:`time.perf_counter` at its start."""
        cfg, teacher, metric = self.cfg, self.teacher, self.metric
        summaries = self.summaries()
        ctx = self.contexts[cfg.seeds[0]]
        latency = _latency_record(ctx, teacher) if cfg.match == "latency" else {}
        return {
            "preset": cfg.preset, "budget": cfg.budget, "match": cfg.match,
            **({"reference": cfg.reference} if cfg.reference != "inhernet" else {}),
            "experts": ctx.reference.inhernet_plan.config.experts, "metric": metric, "higher_is_better": self.higher,
            "teacher": {
                "params": _params(teacher), "macs": count_macs(teacher, self.example),
                "metric": self.teacher_scores[metric], "digest": self.digest,
                **({"latency_ms": latency["teacher_ms"]} if latency else {}),
                **other_metrics(_others(self.teacher_scores, metric)),
            },
            "methods": summaries,
            **({"latency": latency["how"]} if latency else {}),
            **({"excluded": dict(self.preset.excluded)} if self.preset.excluded else {}),
            "steps": self.steps, **({"epochs": cfg.epochs} if cfg.epochs is not None else {}),
            "lr": None if cfg.tune_lr else cfg.lr, "test_count": int(self.teacher_scores["count"]),
            **({"curve_split": cfg.curve_split} if cfg.curve_split != "test" else {}),
            **({"tuning": self.tuner.describe(self.tuned)} if self.tuner is not None else {}),
            **({"schedule": _schedule_record(cfg)} if cfg.schedule != "cosine" else {}),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "wall_s": round(time.perf_counter() - start, 1),
        }


def _validation_indices(preset: Preset, val_examples: int, n_train: int) -> list[int]:
    """The validation split's indices in the training split: the first ``val_examples`` of the preset's own
    (:attr:`Preset.validation`), else its last ``val_examples`` examples (at most a fifth of them)."""
    if preset.validation is None:
        if n_train < 2:
            raise ValueError(f"the training split ({n_train} examples) is too small to carve a validation split from")
        return list(range(n_train - min(val_examples, max(1, n_train // 5)), n_train))
    held = [int(i) for i in preset.validation()][:val_examples]
    if not held or min(held) < 0 or max(held) >= n_train or len(set(held)) < len(held):
        raise ValueError(
            f"preset {preset.name!r}: validation() must give distinct indices into its {n_train} training examples"
        )
    return held


def _schedule_record(cfg: BenchConfig) -> dict[str, Any]:
    """How each run's final point was chosen, for the result's ``schedule`` (``schedule="constant"``)."""
    stop = f"early stop after {cfg.patience} validation points without a better one" if cfg.patience else "none"
    return {
        "lr": cfg.schedule, "keep": "the best validation point (the curve's split)", "patience": cfg.patience,
        "stop": stop,
    }


def _latency_record(ctx: MethodContext, teacher: nn.Module) -> dict[str, Any]:
    """The teacher's latency (ms) on the reference's scale, and how every ``latency_ms`` was measured."""
    example = ctx.calib[0]
    return {
        "teacher_ms": ctx.size(teacher) / 1e6,
        "how": {
            "example": "the first calibration batch, whole", "batch_size": _batch_size(example),
            "threads": torch.get_num_threads(),
            "deployed": "compact() for models with InherNet blocks, the model itself otherwise",
            "timing": "the cost table's latency(): medians of interleaved repetitions, each model timed "
            "together with the compact inhernet reference and scaled to its time",
        },
    }


def _batch_size(batch: Any) -> int | None:
    """The leading dimension of a batch's (first) input tensor, if any."""
    if isinstance(batch, Mapping):
        batch = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    elif isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    return int(batch.shape[0]) if isinstance(batch, torch.Tensor) and batch.dim() else None


def _resident() -> str:
    """``"  RSS x.x GiB"``: the process's resident memory now (Linux), else ``""``."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return ""
    return f"  RSS {pages * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB"


def _distill_config(bench: _Bench, seed: int, steps: int, lr: float, **options: Any) -> DistillConfig:
    """The ``DistillConfig`` of one of ``bench``'s runs (or tuning runs): the bench's KD recipe, then the
    preset's options, then the user's ``distill_overrides`` (which win)."""
    cfg, preset = bench.cfg, bench.preset
    recipe = dict(
        steps=steps, lr=lr, temperature=cfg.temperature, alpha=cfg.alpha, teacher_topk=preset.teacher_topk,
        seed=seed, metric=bench.metric, **options,
    )
    if cfg.schedule == "cosine":
        return DistillConfig(**{**recipe, **preset.distill_options, **cfg.distill_overrides})
    return ExperimentalDistillConfig(**{**recipe, **preset.distill_options, **cfg.distill_overrides}, schedule=cfg.schedule)


#: the seed of the tuning runs, whichever seeds are benchmarked: the chosen lr is the same for a
#: benchmark split into parts by seed
TUNE_SEED = 0


#: what a method's tuning adds to each of its runs: every tuning run's score, the final grid, and whether
#: the best lr is inside it
_TUNING_KEYS = ("lr_scores", "lr_grid", "interior")


class _Tuner:
    """Short runs at each learning rate of the grid, scored on a validation split of the training data.

    The validation split is the last ``val_examples`` examples of the training split (at most a fifth
    of it); the tuning runs train on its first examples, never on those. A best lr at an edge of the grid
    extends the grid past that edge (``lr_extensions``).
    """

    def __init__(self, bench: _Bench) -> None:
        cfg, n = bench.cfg, len(bench.train.dataset)
        self.bench, self.cfg, self.n_val, self.val = bench, cfg, bench.n_val, bench.val
        self.steps = cfg.tuning_steps(bench.steps)
        self.tune_n = min(bench.train_n, n - self.n_val, self.steps * cfg.batch_size)

    @property
    def train_set(self) -> Subset:
        """The first examples of the training split: what the tuning runs train on."""
        return Subset(self.bench.training_set(), range(self.tune_n))

    def describe(self, tuned: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """How the learning rates were chosen, for the result's ``tuning``; ``tuned``: each method's tuning."""
        return {
            "lr_grid": list(self.cfg.lr_grid), "steps": self.steps, "seed": TUNE_SEED,
            "share": round(self.steps / self.bench.steps, 4), "lr_extensions": self.cfg.lr_extensions,
            "train_examples": self.tune_n, "val_examples": self.n_val,
            "split": "validation: the preset's own, held out of its teacher's training; tuning trains on the first "
            "other training examples" if self.bench.preset.validation is not None else
            "validation: the last examples of the training split; tuning trains on its first examples",
            "methods": {name: {k: t[k] for k in _TUNING_KEYS if k in t} for name, t in tuned.items()},
        }

    def tune(self, name: str, student: nn.Module) -> dict[str, Any]:
        """``{"lr": best, "lr_scores": {lr: validation metric} of every tuning run, "lr_grid": the final grid
        (sorted, as the scores), "interior": whether best is inside it}`` for method ``name``'s ``student``."""
        grid, scores = sorted(self.cfg.lr_grid), {}
        for extension in range(self.cfg.lr_extensions + 1):
            for lr in grid:
                if f"{lr:g}" not in scores:
                    scores[f"{lr:g}"] = self.score(name, student, lr)
            best = float(_best(scores, self.bench.higher))
            beyond = _beyond_edge(grid, best)
            if beyond is None or extension == self.cfg.lr_extensions:
                break
            grid = sorted([*grid, beyond])
            self.bench.log(f"tune {name:<22} best lr {best:g} is at the grid's edge: adding {beyond:g}")
        # in the final grid's order: a table lists the scores from the smallest lr to the largest
        scores = {f"{lr:g}": scores[f"{lr:g}"] for lr in grid}
        return {"lr": best, "lr_scores": scores, "lr_grid": grid, "interior": beyond is None}

    def score(self, name: str, student: nn.Module, lr: float) -> float:
        """The validation metric of a copy of ``student`` after a tuning run at ``lr``."""
        cfg, bench, metric = self.cfg, self.bench, self.bench.metric
        model = copy.deepcopy(student)
        train = DataLoader(
            self.train_set, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(TUNE_SEED)
        )
        dcfg = _distill_config(bench, TUNE_SEED, self.steps, lr, val_every=0, val_at_start=False, progress=False)
        distill(model, bench.teacher, train, None, dcfg)
        score = evaluate(model, self.val, metric)[metric]
        bench.log(f"tune {name:<22} lr {lr:g}: validation {metric} {score:.4f} after {self.steps} steps")
        return score


def _beyond_edge(grid: Sequence[float], best: float) -> float | None:
    """The lr one grid step past the edge of the sorted ``grid`` that ``best`` sits on (the ratio of the
    two lrs at that edge, rounded to 3 digits), or ``None`` when ``best`` is inside it."""
    if best == grid[0]:
        return float(f"{grid[0] * grid[0] / grid[1]:.3g}")
    if best == grid[-1]:
        return float(f"{grid[-1] * grid[-1] / grid[-2]:.3g}")
    return None


def _best(scores: Mapping[str, float], higher: bool) -> str:
    """The key of the best score (NaN is worst)."""
    def key(k: str) -> float:
        v = scores[k]
        return -math.inf if math.isnan(v) else (v if higher else -v)

    return max(scores, key=key)


def _recipe(name: str, student: nn.Module, size: tuple[int, int]) -> dict[str, Any]:
    """What identifies method ``name``'s student: its builder's code, its size and its InherNet config."""
    builder = inspect.getsource(METHODS[name]) if name in METHODS else name
    recipe: dict[str, Any] = {
        "method": name, "builder": hashlib.sha256(builder.encode()).hexdigest()[:16],
        "params": size[0], "macs": size[1],
    }
    plan = getattr(student, "inhernet_plan", None)
    if plan is not None:
        recipe["config"] = plan.config.to_dict()
    return json.loads(json.dumps(recipe, default=str))


def _others(scores: dict[str, float], metric: str) -> dict[str, float]:
    """The metrics ``evaluate`` returned besides the preset's own (a dual encoder's recalls)."""
    return {k: v for k, v in scores.items() if k not in (metric, "count")}


class _Head:
    """The first ``n`` examples of a loader (re-iterable): a cheaper split for learning curves."""

    def __init__(self, loader: Any, n: int, batch_size: int) -> None:
        self.loader, self.batches = loader, max(1, -(-n // getattr(loader, "batch_size", batch_size)))

    def __iter__(self):
        return islice(iter(self.loader), self.batches)

    def __len__(self) -> int:
        return min(self.batches, len(self.loader))


def _has_gates(model: nn.Module) -> bool:
    return any(isinstance(m, InherBlock) and m.gate is not None for m in model.modules())


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
