"""Experts that pay? h = 1 against h = 3 (the paper) and other expert counts, at equal parameters.

Every variant is InherNet (whitened init, energy allocation) on one preset at one parameter budget,
distilled with the same data, steps, optimiser, lr and seeds (the `bench` recipe: AdamW, cosine, KD
T = 4, alpha = 0.9, teacher logits computed once); only the experts differ:

* ``h1``            one expert, no gate (the reference);
* ``h<N>-soft``     N >= 2 softmax-gated experts, per-sample gates on convs (the paper: ``h3-soft``).

The gate variants of the committed results (top-1 routing, per-position conv gates, a gate learning rate)
lost on every measurement and were removed from the library (``benchmarks/results/experts-pay-mnist-cnn-0.1*.md``).

After training: the final metric on the whole test split, the metric after folding the experts into
one (``merge_experts`` on the calibration data), and gate diagnostics on the calibration data
(:func:`inhernet_bench.gate_stats.gate_stats`: gate entropy / log h, routing-load entropy, expert spread).
MACs are ``count_macs`` per example. Writes ``experts-pay-<preset>-<budget>[-<tag>].json`` and ``.md`` atomically.

    OMP_NUM_THREADS=1 python -m inhernet_bench.scripts.experts_pay --preset mnist-cnn --budget 0.1 --seeds 1 --steps 1000
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from inhernet import InherConfig, count_macs, inherit, merge_experts
from inhernet._atomic import atomic_write
from inhernet.distillation import DistillConfig, distill
from inhernet.evaluate import evaluate
from inhernet_bench.gate_stats import gate_stats, summarize_gates
from inhernet_bench.presets.registry import get_preset
from inhernet_bench.runner import first_example, teacher_training_set
from inhernet_bench.scripts import RESULTS

VARIANTS = ("h1", "h3-soft")


def variant_experts(name: str) -> int:
    """The experts of variant ``name``: ``h1`` (one expert, no gate) or ``h<N>-soft`` (N >= 2 gated experts)."""
    m = re.fullmatch(r"h([1-9][0-9]*)(-soft)?", name)
    if m is None or (m[1] == "1") == bool(m[2]):
        raise ValueError(
            f"unknown variant {name!r}; choose h1 or h<N>-soft with N >= 2 (e.g. h3-soft): the top-1, per-position "
            "and gate-lr variants were removed"
        )
    return int(m[1])


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring); an unknown variant fails here."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mnist-cnn")
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--calib-size", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="", help="suffix of the output files' names (several runs side by side)")
    args = ap.parse_args(argv)
    for v in args.variants:
        variant_experts(v)  # fail early on a typo
    return args


@dataclass
class Setup:
    """What every variant shares: the preset's teacher, calibration batches, training set and test split."""

    preset: Any
    teacher: nn.Module
    calib: list[Any]
    train_set: Any
    test: Any
    example: Any

    @classmethod
    def of(cls, args: argparse.Namespace) -> Setup:
        """``--preset``'s, its training set the first ``steps * batch_size`` examples with the teacher's outputs."""
        preset = get_preset(args.preset)
        teacher = preset.teacher()
        calib = preset.calib(args.calib_size)
        train, test = preset.data(args.batch_size)
        train_set: Any = Subset(train.dataset, range(min(len(train.dataset), args.steps * args.batch_size)))
        train_set = teacher_training_set(preset, teacher, train_set, DistillConfig().temperature)
        return cls(preset, teacher, calib, train_set, test, first_example(calib[0]))


def run_variant(args: argparse.Namespace, s: Setup, name: str, seed: int) -> dict[str, Any]:
    """Variant ``name`` at ``seed`` inherited, distilled and measured: one run's record."""
    metric = s.preset.metric
    cfg = InherConfig(budget=args.budget, experts=variant_experts(name), init="whiten", seed=seed)
    student = inherit(s.teacher, cfg, calib=s.calib, progress=False)
    zero_shot = evaluate(student, s.test, metric)[metric]
    loader = DataLoader(
        s.train_set, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    dcfg = DistillConfig(**{
        "steps": args.steps, "lr": args.lr, "seed": seed, "metric": metric, "val_every": 0,
        "val_at_start": False, "teacher_topk": s.preset.teacher_topk, **s.preset.distill_options,
    })
    history = distill(student, s.teacher, loader, None, dcfg)
    final = evaluate(student, s.test, metric)[metric]
    stats = gate_stats(student, s.calib)
    merged_model = merge_experts(copy.deepcopy(student), s.calib)
    return {
        "seed": seed, "params": _params(student), "macs": count_macs(student, s.example),
        "zero_shot": zero_shot, "final": final,
        "merged": evaluate(merged_model, s.test, metric)[metric] if stats else final,
        "gates": summarize_gates(stats), "gate_blocks": stats, "steps": history["steps"],
        "ranks": student.inhernet_plan.ranks(),
    }


def summary_row(name: str, rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Variant ``name``'s row: its size, and its runs' metrics and gate diagnostics averaged over seeds."""
    finals = [r["final"] for r in rs]
    gates = [r["gates"] for r in rs if r["gates"]]
    return {
        "variant": name, "params": rs[0]["params"], "macs": rs[0]["macs"],
        "mean_rank": sum(rs[0]["ranks"].values()) / max(len(rs[0]["ranks"]), 1),
        "zero_shot": statistics.fmean(r["zero_shot"] for r in rs),
        "final_mean": statistics.fmean(finals), "final_std": statistics.pstdev(finals),
        "merged_mean": statistics.fmean(r["merged"] for r in rs),
        **({k: statistics.fmean(g[k] for g in gates) for k in ("entropy", "load_entropy", "spread")} if gates else {}),
        "runs": rs,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    s = Setup.of(args)
    metric = s.preset.metric
    teacher_metric = evaluate(s.teacher, s.test, metric)[metric]
    print(f"teacher: {_params(s.teacher):,} params, {metric} {teacher_metric:.4f}", flush=True)

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        for name in args.variants:
            run = run_variant(args, s, name, seed)
            runs[name].append(run)
            g = run["gates"]
            gates = f"entropy {g['entropy']:.3f} load {g['load_entropy']:.3f} spread {g['spread']:.3f}" if g else ""
            print(f"seed {seed} {name:<14} {run['params']:>8,} params {run['macs']:>10,} MACs  zero-shot "
                  f"{run['zero_shot']:.4f}  final {run['final']:.4f}  merged {run['merged']:.4f}  {gates}", flush=True)

    given = sys.argv[1:] if argv is None else argv
    result = {
        "preset": args.preset, "budget": args.budget, "metric": metric, "steps": args.steps,
        "batch_size": args.batch_size, "lr": args.lr,
        "seeds": seeds, "command": "OMP_NUM_THREADS=1 python -m inhernet_bench.scripts.experts_pay " + shlex.join(given),
        "teacher": {"params": _params(s.teacher), "macs": count_macs(s.teacher, s.example), "metric": teacher_metric},
        "rows": [summary_row(name, runs[name]) for name in args.variants], "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "wall_s": round(time.perf_counter() - start, 1),
    }
    stem = args.out / f"experts-pay-{args.preset}-{args.budget}{'-' + args.tag if args.tag else ''}"
    # Not with_suffix: the budget's decimal point would be taken for a suffix.
    atomic_write(stem.parent / f"{stem.name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write(stem.parent / f"{stem.name}.md", render(result))
    print(render(result) + f"\nwrote {stem}.json and .md")
    return 0


def render(result: dict[str, Any]) -> str:
    """The markdown table of a result."""
    metric = result["metric"]
    lines = [
        f"| variant | params | MACs | mean rank | zero-shot {metric} | final {metric} (mean ± std) "
        "| merged | gate entropy | load entropy | expert spread |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        gates = f"{r['entropy']:.3f} | {r['load_entropy']:.3f} | {r['spread']:.3f}" if "entropy" in r else " | | "
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['macs']:,} | {r['mean_rank']:.1f} | "
            f"{r['zero_shot']:.4f} | {r['final_mean']:.4f} ± {r['final_std']:.4f} | {r['merged_mean']:.4f} | {gates} |"
        )
    t = result["teacher"]
    return (
        f"# Experts that pay? {result['preset']} at budget {result['budget']} of the teacher's parameters\n\n"
        f"Command: `{result['command']}`\n\nTeacher: {t['params']:,} params, {t['macs']:,} MACs, {metric} "
        f"{t['metric']:.4f}. Every row: InherNet (whitened init, energy allocation), {result['steps']} KD steps "
        f"at batch {result['batch_size']}, lr {result['lr']}, seeds {result['seeds']}; {result['machine']}, "
        f"wall {result['wall_s']} s.\n"
        "Gate entropy: mean softmax entropy / log h over the calibration data (1 = uniform); load entropy: "
        "entropy of the mean routing / log h (1 = every expert used equally); expert spread: mean distance of "
        "the experts from their mean / its norm.\n\n" + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
