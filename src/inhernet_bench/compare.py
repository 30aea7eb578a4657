"""``inhernet-bench compare``: the benchmark's methods side by side on the user's own model and data.

The teacher and data are opened as ``inhernet compress`` opens them (:mod:`inhernet.sources`), made into a
:class:`~inhernet_bench.presets.registry.Preset` and run by :func:`~inhernet_bench.runner.run_bench` with the
bench's validation discipline: every learning rate chosen on a validation split carved from the training data,
the learning curves measured there too (the runs never train on it), and the test split read once per final
row. The rows get mean +- s.e. over seeds, the measured latency of their deployed form and a verdict against
the best (:mod:`inhernet_bench.stats`), and the table ends with a recommendation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from inhernet.calibration import split_example
from inhernet.costs.table import measure_latency
from inhernet.deploy import deployed
from inhernet.serialization import CONFIG_NAME
from inhernet.sources import (
    DataOptions,
    Opened,
    Source,
    calibration_batches,
    make_loader,
    open_source,
    parse_model_spec,
    read_source,
    split,
)
from inhernet.stack import layer_stack
from inhernet_bench.baselines import MethodContext, build_student
from inhernet_bench.baselines.llm_prune import gated_mlps
from inhernet_bench.presets.registry import Preset
from inhernet_bench.runner import BenchConfig, run_bench
from inhernet_bench.stats import Score, Z, best_and_ties, score, verdict

__all__ = [
    "COMPARE_METHODS", "UserModel", "compare", "compare_table", "latency_ratios", "not_applicable", "recommendation",
    "student_builder", "user_preset",
]

#: what ``compare`` runs unless told otherwise, those that apply to the model's family
COMPARE_METHODS = ("inhernet", "inhernet-paper", "kd-student", "prune-kd", "svd-kd", "layerdrop-kd")


@dataclass(frozen=True)
class UserModel:
    """What ``compare`` is asked about: MODEL as ``inhernet compress`` takes it (``torchvision:NAME``,
    ``timm:NAME``, a Hugging Face directory, or a directory written by ``inhernet compress``, whose teacher
    is compared), the training data, and the test data: ``test`` or, without it, ``test_fraction`` of
    ``data`` held out (drawn with ``split_seed``)."""

    model: str
    data: str
    test: str | None = None
    weights: str | None = None
    task: str | None = None
    num_classes: int | None = None
    prep: dict[str, Any] = field(default_factory=dict)
    test_fraction: float = 0.2
    split_seed: int = 0

    def open(self) -> tuple[Opened, Dataset, Dataset]:
        """The teacher with its data, the training split and the test split."""
        compressed = Path(self.model, CONFIG_NAME).is_file()
        if compressed and (self.weights or self.task or self.num_classes):
            raise ValueError(f"weights, task and num_classes describe a model spec; {self.model}'s teacher is "
                             "recorded in its source.json")
        spec = None if compressed else parse_model_spec(
            self.model, weights=self.weights, task=self.task, num_classes=self.num_classes
        )
        source = read_source(self.model) if spec is None else Source(spec, DataOptions())
        opened = open_source(replace(source, data=source.data.updated(**self.prep)), self.data)
        if self.test is None:
            train, test = split(opened.data.dataset, self.test_fraction, self.split_seed)
            assert test is not None  # test_fraction > 0
        else:  # prepared as the training data, with its class names (the same label numbers)
            train, test = opened.data.dataset, open_source(opened.source, self.test).data.dataset
        # the runner carves its validation split from the end of the training split: shuffle it first, so that
        # a file sorted by class gives a validation split of every class
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        return opened, Subset(train, order), test


def student_builder(teacher: nn.Module, num_classes: int | None) -> Callable[[int], nn.Module] | None:
    """A conventional smaller student of ``teacher``'s architecture with at least N parameters, where one can
    be made: a Hugging Face BERT or Llama (fewer or narrower layers), timm's EfficientNet-Lite0 (narrower)."""
    from inhernet_bench.baselines.students import bert_student, effnet_student, llama_student

    config = getattr(teacher, "config", None)
    kind = getattr(config, "model_type", None) or getattr(teacher, "default_cfg", {}).get("architecture")
    builders: dict[str, Callable[[int], nn.Module]] = {
        "bert": lambda n: bert_student(config, n),
        "llama": lambda n: llama_student(config, n),
        "efficientnet_lite0": lambda n: effnet_student(n, num_classes=num_classes or 1000),
    }
    return builders.get(str(kind))


def user_preset(name: str, opened: Opened, train: Dataset, test: Dataset, batch_size: int) -> Preset:
    """``opened``'s teacher on ``train`` / ``test`` as a preset named ``name``, leaving out the methods that do
    not apply to its family (no conventional student to build, no stack of blocks to drop)."""
    teacher, classes = opened.teacher, opened.data.classes
    student = student_builder(teacher, len(classes) if classes else None)
    lm = opened.data.metric == "perplexity"
    excluded = not_applicable(teacher, student is not None, lm)
    # calibration from the training examples the runner's validation split (at most a fifth, at the end) leaves
    fit = Subset(train, range(len(train) - max(1, len(train) // 5)))
    return Preset(
        name, f"{opened.source.model} on the user's data", opened.data.metric, lambda: teacher,
        lambda batch, **_: (DataLoader(train, batch_size=batch), make_loader(test, batch)),
        lambda n: calibration_batches(fit, n, batch_size), student,
        methods=tuple(m for m in COMPARE_METHODS if m not in excluded), excluded=excluded,
        cache_teacher=not lm,  # an LM's logits (positions x vocabulary per example) are too big to keep
    )


def not_applicable(teacher: nn.Module, has_student: bool, lm: bool) -> dict[str, str]:
    """The methods of :data:`COMPARE_METHODS` that cannot run on ``teacher``, with the reason."""
    reasons = {}
    if not has_student:
        reasons["kd-student"] = "no conventional student of this architecture to build (BERT, Llama, EfficientNet-Lite0)"
    for method, check in (("layerdrop-kd", layer_stack), ("prune-kd", gated_mlps if lm else None)):
        try:
            if check is not None:
                check(teacher)
        except ValueError as err:
            reasons[method] = str(err)
    return reasons


def compare(user: UserModel, cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``cfg``'s methods (default: :data:`COMPARE_METHODS` that apply) on ``user``'s model and data with
    tuned learning rates and validation curves; returns the bench's JSON dict with each row's ``se``,
    ``latency_ratio`` and ``verdict`` against the best, and the ``recommendation``."""
    opened, train, test = user.open()
    name = f"{user.model} on {user.data} ({len(train)} train) / {user.test or 'held out'} ({len(test)} test)"
    preset = user_preset(name, opened, train, test, cfg.batch_size)
    cfg = replace(cfg, preset=name, tune_lr=True, curve_split="validation")
    result = run_bench(cfg, log, preset)
    ratios = latency_ratios(preset, cfg, [m["name"] for m in result["methods"]])
    n_test = result["test_count"] if "accuracy" in result["metric"] else None
    scores = {m["name"]: score([run["final"] for run in m["per_seed"]], n_test) for m in result["methods"]}
    best, _ = best_and_ties(scores, result["higher_is_better"])
    for m in result["methods"]:
        m["se"], m["latency_ratio"] = scores[m["name"]].se, ratios[m["name"]]
        m["verdict"] = "best" if m["name"] == best else verdict(scores[m["name"]], scores[best], result["higher_is_better"])
    result["recommendation"] = recommendation(result["methods"], scores, result["higher_is_better"])
    result["source"] = {"model": user.model, "data": user.data, "test": user.test,
                        **({} if user.test else {"test_fraction": user.test_fraction, "split_seed": user.split_seed})}
    return result


def latency_ratios(preset: Preset, cfg: BenchConfig, methods: Sequence[str]) -> dict[str, float]:
    """Each method's measured latency over the teacher's: the deployed forms of seed 0's students (latency
    depends on the architecture, not the trained weights), timed interleaved on the first calibration batch."""
    teacher, calib = preset.teacher(), preset.calib(cfg.calib_size)
    ctx = MethodContext(teacher, cfg.budget, cfg.experts, calib, seed=0, student_builder=preset.student)
    ctx.reference = build_student("inhernet", ctx)
    example = split_example(calib, "latency")[0]
    models = [ctx.reference if name == "inhernet" else build_student(name, ctx) for name in methods]
    seconds = measure_latency([teacher, *(deployed(m, calib, example=example) for m in models)], example)
    return {name: s / seconds[0] for name, s in zip(methods, seconds[1:], strict=True)}


def recommendation(methods: Sequence[dict[str, Any]], scores: dict[str, Score], higher: bool = True) -> str:
    """"use X" when the best method beats every other by more than :data:`Z` s.e. of the difference, else
    the methods tied with it and the fastest of them (``latency_ratio``; fewest parameters on equal time)."""
    best, tied = best_and_ties(scores, higher)
    if tied == [best]:
        return f"use {best}: better than every other method by more than {Z:g} s.e. of the difference"
    rows = {m["name"]: m for m in methods}
    pick = min(tied, key=lambda n: (round(rows[n]["latency_ratio"], 2), rows[n]["params"]))
    return (f"tie between {', '.join(tied)} (within {Z:g} s.e. of {best}): pick the smaller/faster, {pick} "
            f"({rows[pick]['latency_ratio']:.2f}x the teacher's latency, {rows[pick]['params']:,} params)")


def compare_table(result: dict[str, Any]) -> Table:
    """The teacher and each method: score mean ± s.e., parameters and MACs (and their shares of the teacher's),
    measured latency over the teacher's, the verdict against the best."""
    metric, t = result["metric"], result["teacher"]
    seeds = len(result["methods"][0]["seeds"]) if result["methods"] else 0
    table = Table(
        "method", f"{metric} (mean ± s.e.)", "params", "MACs", "latency", "vs the best",
        title=f"{result['preset']} at budget {result['budget']} ({seeds} seeds, {result['steps']} steps)",
    )
    n_test = result["test_count"] if "accuracy" in metric else None  # one evaluation: its binomial error alone
    table.add_row("teacher", score([t["metric"]], n_test).text(), f"{t['params']:,}", f"{t['macs']:,}", "1.00x", "")
    for m in result["methods"]:
        table.add_row(
            m["name"], Score(m["metric_mean"], m["se"]).text(), f"{m['params']:,} ({m['params'] / t['params']:.0%})",
            f"{m['macs']:,} ({m['macs'] / max(t['macs'], 1):.0%})", f"{m['latency_ratio']:.2f}x", m["verdict"],
        )
    return table
