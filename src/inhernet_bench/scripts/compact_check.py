"""Does ``compact()`` keep the student's accuracy? Issue 26's acceptance of item 3, measured per case.

For each case (the presets, and ``bbc-minilm``: the MiniLM BBC topic classifier of
:mod:`~inhernet_bench.scripts.kd_defaults`, whose teacher, data and splits are reused), the harness's
default student (``MethodContext(...).config()``: the family's recipe, whitened init, at the case's
budget) is trained ``--steps`` KD steps at its family's default learning rate (the claim is about
compact's fidelity, not the student's quality; it only has to have moved from its init), then scored on
a validation split carved from the end of the TRAINING split (the test split is never read) as:

* ``student``: the trained student itself;
* ``compact``: ``compact()`` by default (ranks rounded to 8 only where no output changes);
* ``exact``: ``compact(rank_multiple=1)``: every rank kept;
* ``round-8``: ``compact(tolerance=inf)``: every rank rounded down to a multiple of 8, the old behaviour.

Each model's parameters and latency (median of ``--repeats`` interleaved timings of a forward pass on
the first calibration batch, the harness's latency example, at ``--threads`` torch threads) are
recorded, with compact's ``output_change``. A case passes when ``compact`` is within ``--points`` of the
student: accuracy points, or per cent of the student's perplexity. Results go to ``--out`` (JSON, one
entry per case: cases already there are skipped unless ``--force``) and a markdown table beside it.

    OMP_NUM_THREADS=2 python -m inhernet_bench.scripts.compact_check --cases mnist-cnn
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inhernet import inherit
from inhernet._atomic import atomic_write
from inhernet.costs.table import measure_latency
from inhernet.deploy.compact import compact
from inhernet.distillation import DistillConfig, distill
from inhernet.distillation.defaults import default_lr
from inhernet.evaluate import evaluate
from inhernet_bench.baselines.methods import MethodContext
from inhernet_bench.scripts import kd_defaults

OUT = kd_defaults.ROOT / "benchmarks" / "results" / "compact-check.json"
CASES = ("mnist-cnn", "fashion-effnet", "tweets-minilm", "bbc-minilm", "fashion-dual", "smollm2-bbc")
#: the compact forms compared with the student: compact()'s keyword arguments
POLICIES: dict[str, dict[str, Any]] = {
    "compact": {}, "exact": {"rank_multiple": 1}, "round-8": {"rank_multiple": 8, "tolerance": math.inf},
}


def drop_points(student: float, other: float, metric: str) -> float:
    """How much worse ``other`` scores than ``student``: accuracy points, or per cent of a perplexity."""
    if metric == "perplexity":
        return 100 * (other - student) / student
    return 100 * (student - other)


def train_student(student: nn.Module, case: kd_defaults.Case, loader: Any, steps: int) -> dict[str, Any]:
    """KD-train ``student`` in place at its family's default learning rate; what was used, and how far
    its weights moved (``||w - w0|| / ||w0||`` over every parameter)."""
    before = [p.detach().clone() for p in student.parameters()]
    lr, family = default_lr(student, case.options.get("loss", "kd"))
    cfg = DistillConfig(steps=steps, lr=None, seed=0, metric=case.metric, val_every=0, val_at_start=False,
                        progress=False, **case.options)
    distill(student, case.teacher, loader, None, cfg)
    moved = sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(student.parameters(), before, strict=True))
    norm = sum(float(b.pow(2).sum()) for b in before)
    return {"family": family, "lr": lr, "moved": math.sqrt(moved / max(norm, 1e-30))}


def compact_forms(student: nn.Module, calib: list[Any]) -> tuple[dict[str, nn.Module], dict[str, dict[str, Any]]]:
    """Every policy's compact form of ``student`` (the first calibration batch as the example), and per
    policy compact's output change, how its ranks were rounded and its warnings."""
    forms: dict[str, nn.Module] = {}
    notes: dict[str, dict[str, Any]] = {}
    for name, kwargs in POLICIES.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            forms[name] = compact(student, calib, example=calib[0], **kwargs)
        books = forms[name].inhernet_compact
        rounded = [e["rounding"].split(":")[0].split(" from")[0]  # "rounded down", "rounded up" or "kept"
                   for e in books["layers"].values() if "rounding" in e and not e["dense"]]
        notes[name] = {
            "output_change": books["output_change"],
            "dense_layers": sum(e["dense"] for e in books["layers"].values()),
            "factorised_layers": sum(not e["dense"] for e in books["layers"].values()),
            "rounding": {how: rounded.count(how) for how in sorted(set(rounded))},
            "warnings": [str(w.message) for w in caught if issubclass(w.category, UserWarning)],
        }
    return forms, notes


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def batch_size_of(batch: Any) -> int:
    """The leading dimension of a batch's first tensor."""
    tensors = list(batch.values()) if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    return int(next(t for t in tensors if isinstance(t, torch.Tensor)).shape[0])


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build, train, compact, score and time case ``name``; its JSON record."""
    family, budget, batch_size, n_val = kd_defaults.CASES[name]
    start = time.perf_counter()
    case = kd_defaults.load_case(name, batch_size)
    train, val = kd_defaults.split_loaders(case, batch_size, args.val_examples or n_val, args.steps)
    config = MethodContext(case.teacher, budget, None, case.calib).config()  # the harness's "inhernet" method
    student = inherit(case.teacher, config, calib=case.calib, progress=False)
    untrained = evaluate(student, val, case.metric)[case.metric]
    training = train_student(student, case, train, args.steps)
    forms, notes = compact_forms(student, case.calib)
    models = {"student": student, **forms}
    scores = {k: evaluate(m, val, case.metric)[case.metric] for k, m in models.items()}
    seconds = measure_latency(list(models.values()), case.calib[0], repeats=args.repeats, threads=args.threads)
    rows = {
        k: {"score": scores[k], "drop_points": drop_points(scores["student"], scores[k], case.metric),
            "params": n_params(m), "latency_ms": 1e3 * s, **notes.get(k, {})}
        for (k, m), s in zip(models.items(), seconds, strict=True)
    }
    drop = rows["compact"]["drop_points"]
    print(f"{name}: {case.metric} student {scores['student']:.4f} (untrained {untrained:.4f}, weights moved "
          f"{training['moved']:.1e}), " + ", ".join(
        f"{k} {scores[k]:.4f}" for k in POLICIES) + f": {'PASS' if drop <= args.points else 'FAIL'}", flush=True)
    return {
        "case": name, "family": family, "budget": budget, "steps": args.steps, "batch_size": batch_size,
        **training, "train_examples": len(train.dataset), "val_examples": len(val.dataset),
        "split": f"validation: {kd_defaults.validation_source(case)}", "metric": case.metric,
        "higher_is_better": case.metric != "perplexity", "untrained": untrained, "models": rows,
        "points": args.points, "within_points": drop <= args.points,
        "speedup_vs_round8": rows["round-8"]["latency_ms"] / rows["compact"]["latency_ms"],
        "latency": {"example": "the first calibration batch", "batch_size": batch_size_of(case.calib[0]),
                    "threads": args.threads, "repeats": args.repeats,
                    "timing": "inhernet.costs.table.measure_latency: medians of interleaved rounds"},
        "wall_s": round(time.perf_counter() - start, 1), "torch": torch.__version__, "command": args.command,
    }


def markdown(results: dict[str, Any]) -> str:
    """One table over every case in ``results``: each model's score, parameters and latency."""
    lines = ["# compact() keeps the student's accuracy (issue 26, item 3)", "",
             "Validation split carved from the training data; `drop`: accuracy points below the student (per "
             "cent of its perplexity for a language model); latency: median ms per forward pass.", "",
             "| case | metric | model | score | drop | params | latency ms | output change | ranks rounded |",
             "|---|---|---|---|---|---|---|---|---|"]
    commands = []
    for name, r in results["cases"].items():
        verdict = "PASS" if r["within_points"] else "FAIL"
        for k, m in r["models"].items():
            change = f"{m['output_change']:.1e}" if "output_change" in m else ""
            rounding = ", ".join(f"{n} {how}" for how, n in m.get("rounding", {}).items())
            label = f"{k} ({verdict} at {r['points']:g})" if k == "compact" else k
            lines.append(f"| {name} | {r['metric']} | {label} | {m['score']:.4f} | {m['drop_points']:+.2f} | "
                         f"{m['params']:,} | {m['latency_ms']:.3f} | {change} | {rounding} |")
        commands.append(f"- {name}: `{r['command']}` ({r['wall_s']:.0f} s; {r['steps']} KD steps at lr {r['lr']:g}, "
                        f"latency at batch {r['latency']['batch_size']}, {r['latency']['threads']} threads; "
                        f"compact {r['speedup_vs_round8']:.2f}x the speed of round-8)")
    return "\n".join([*lines, "", "Commands:", "", *commands, ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--steps", type=int, default=100, help="KD steps of the student (default 100)")
    ap.add_argument("--repeats", type=int, default=11, help="timed rounds per model (default 11)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads while timing (default 2)")
    ap.add_argument("--points", type=float, default=0.5, help="the largest drop that passes (default 0.5)")
    ap.add_argument("--val-examples", type=int, default=None, help="[the case's, as kd_defaults]")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--force", action="store_true", help="measure cases already in --out again")
    args = ap.parse_args(argv)
    threads = os.environ.get("OMP_NUM_THREADS")
    args.command = (f"OMP_NUM_THREADS={threads} " if threads else "") + (
        "python -m inhernet_bench.scripts.compact_check " + shlex.join(sys.argv[1:] if argv is None else argv))
    results = json.loads(args.out.read_text()) if args.out.exists() else {"cases": {}}
    for name in args.cases:
        if name in results["cases"] and not args.force:
            print(f"{name}: already in {args.out} (--force measures it again)")
            continue
        results["cases"][name] = measure(name, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, json.dumps(results, indent=2) + "\n")
        atomic_write(args.out.with_suffix(".md"), markdown(results))
    print(markdown(results))
    failed = [n for n in args.cases if not results["cases"][n]["within_points"]]
    print(f"within {args.points:g} points: {'all' if not failed else 'not ' + ', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
