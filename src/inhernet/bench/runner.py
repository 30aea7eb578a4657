"""Run the benchmark methods on a preset and collect the contract JSON (see DESIGN.md)."""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..baselines import MethodContext, build_student
from ..deploy import count_macs, merge_experts
from ..distillation import DistillConfig, distill, precompute_teacher_logits
from ..dual import DUAL_METRICS
from ..evaluate import evaluate
from ..layers import InherBlock
from ..presets.registry import get_preset

__all__ = ["BenchConfig", "run_bench"]

@dataclass
class BenchConfig:
    """What ``run_bench`` runs. ``steps`` defaults to one epoch of the preset's training split."""

    preset: str = "mnist-cnn"
    #: a fraction or count of the teacher's parameters or, with ``match="macs"``, of its MACs
    budget: float | int = 0.25
    #: size every baseline to at least the InherNet's parameters ("params") or MACs ("macs")
    match: Literal["params", "macs"] = "params"
    experts: int = 3
    seeds: Sequence[int] = (0, 1, 2)
    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.9
    #: ``None``: the preset's own list (its ``methods``)
    methods: Sequence[str] | None = None
    calib_size: int = 1000
    curve_points: int = 10
    curve_examples: int = 2000
    progress: bool = True
    distill_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.match not in ("params", "macs"):
            raise ValueError(f"match must be 'params' or 'macs', got {self.match!r}")
        if self.methods is not None and "inhernet" not in self.methods:
            raise ValueError("methods must include 'inhernet': the baselines are sized from it")


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build, distil and evaluate every method for every seed; returns the contract JSON dict.

    Training uses the first ``steps * batch_size`` training examples (all of them at most), with the
    teacher's logits computed once. The final metric is measured on the preset's whole test split,
    the learning curve on its first ``curve_examples`` examples. For one seed every method sees the
    same batches in the same order.
    """
    start = time.perf_counter()
    preset = get_preset(cfg.preset)
    teacher = preset.teacher()
    calib = preset.calib(cfg.calib_size)
    train, test = preset.data(cfg.batch_size)
    steps = cfg.steps or len(train)
    methods = tuple(cfg.methods or preset.methods)
    if "inhernet" not in methods:
        raise ValueError(f"preset {preset.name!r} must list 'inhernet' in its methods")
    train_set: Any = Subset(train.dataset, range(min(len(train.dataset), steps * cfg.batch_size)))
    if preset.cache_teacher:
        # The data is fixed, so the teacher runs once per example, not once per method, seed and step.
        train_set = precompute_teacher_logits(teacher, train_set)
    metric = preset.metric
    example = _first_example(calib[0])
    teacher_scores = evaluate(teacher, test, metric)
    teacher_metric = teacher_scores[metric]
    log(f"teacher: {_params(teacher):,} params, {metric} {teacher_metric:.4f}")

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    sizes: dict[str, tuple[int, int]] = {}
    ranks: dict[str, dict[str, int]] = {}
    order = ["inhernet", *[m for m in methods if m != "inhernet"]]
    for seed in cfg.seeds:
        ctx = MethodContext(teacher, cfg.budget, cfg.experts, calib, seed, preset.student, match=cfg.match)
        for name in order:
            student = build_student(name, ctx)
            if name == "inhernet":
                ctx.reference = student
            sizes[name] = (_params(student), count_macs(student, example))
            if hasattr(student, "inhernet_plan"):
                ranks[name] = student.inhernet_plan.ranks()
            train = DataLoader(
                train_set, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
            )
            options = dict(
                steps=steps, lr=cfg.lr, temperature=cfg.temperature, alpha=cfg.alpha, seed=seed, metric=metric,
                val_every=max(1, steps // cfg.curve_points), progress=cfg.progress,
            )
            dcfg = DistillConfig(**{**options, **preset.distill_options, **cfg.distill_overrides})
            curve_set = _Head(test, cfg.curve_examples, cfg.batch_size)
            # A curve over the whole test split already measures the zero-shot and final metric
            # (validation follows evaluate()'s semantics): don't pay for those evaluations twice.
            whole = len(curve_set) >= len(test) and dcfg.val_at_start
            zero_shot = None if whole else evaluate(student, test, metric)[metric]
            history = distill(student, teacher, train, curve_set, dcfg)
            points = {int(s): v for s, v in history["curve"]}
            zero_shot = points[0] if zero_shot is None else zero_shot
            final_point = points.get(history["steps"]) if whole else None
            # A dual encoder's other metrics (its recalls) come with a full evaluation only.
            needs_eval = final_point is None or metric in DUAL_METRICS
            scores = evaluate(student, test, metric) if needs_eval else {metric: final_point}
            final = scores[metric]
            run = {
                "seed": seed, "zero_shot": zero_shot, "final": final, "steps": history["steps"],
                "sec_per_step": history["sec_per_step"], "curve": history["curve"], "metrics": _others(scores, metric),
            }
            if _has_gates(student):
                # The deployment option: experts folded into one by their mean gate on the calibration data.
                run["merged"] = evaluate(merge_experts(copy.deepcopy(student), calib), test, metric)[metric]
            runs[name].append(run)
            merged = f"  merged {run['merged']:.4f}" if "merged" in run else ""
            log(f"seed {seed} {name:<22} {sizes[name][0]:>10,} params  zero-shot {zero_shot:.4f}  "
                f"final {final:.4f}{merged}  {history['sec_per_step'] * 1000:.1f} ms/step")

    return {
        "preset": cfg.preset, "budget": cfg.budget, "match": cfg.match, "experts": cfg.experts, "metric": metric,
        "higher_is_better": metric != "perplexity",
        "teacher": {
            "params": _params(teacher), "macs": count_macs(teacher, example), "metric": teacher_metric,
            **_extra(_others(teacher_scores, metric)),
        },
        "methods": [
            {**_summarise(name, runs[name], sizes[name]), **({"ranks": ranks[name]} if name in ranks else {})}
            for name in methods
        ],
        "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "wall_s": round(time.perf_counter() - start, 1),
    }


def _summarise(name: str, runs: list[dict[str, Any]], size: tuple[int, int]) -> dict[str, Any]:
    finals = [r["final"] for r in runs]
    curves = [dict(map(tuple, r["curve"])) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    merged = {"merged_mean": statistics.fmean(r["merged"] for r in runs)} if "merged" in runs[0] else {}
    return {
        "name": name, "params": size[0], "macs": size[1],
        "zero_shot": statistics.fmean(r["zero_shot"] for r in runs),
        "metric_mean": statistics.fmean(finals),
        "metric_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "seeds": [r["seed"] for r in runs], "steps": runs[0]["steps"],
        "sec_per_step": statistics.median(r["sec_per_step"] for r in runs),
        "curve": [[s, statistics.fmean(c[s] for c in curves)] for s in steps],
        **merged,
        "per_seed": [{k: r[k] for k in ("seed", "zero_shot", "final", "merged") if k in r} for r in runs],
        **_extra({k: statistics.fmean(r["metrics"][k] for r in runs) for k in runs[0]["metrics"]}),
    }


def _others(scores: dict[str, float], metric: str) -> dict[str, float]:
    """The metrics ``evaluate`` returned besides the preset's own (a dual encoder's recalls)."""
    return {k: v for k, v in scores.items() if k not in (metric, "count")}


def _extra(metrics: dict[str, float]) -> dict[str, Any]:
    """``{"other_metrics": ...}`` when there are any, so other presets' JSON keeps its shape."""
    return {"other_metrics": metrics} if metrics else {}


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


def _first_example(batch: Any) -> Any:
    """One example of an input batch (a tensor or a dict of tensors): MACs are reported per example."""
    if isinstance(batch, torch.Tensor):
        return batch[:1]
    if isinstance(batch, Mapping):
        return {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
