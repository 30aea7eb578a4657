"""How many experts? InherNet with h = 1..4 at the same parameter budget, on one preset.

At a fixed budget every extra expert costs rank (each expert is another r x m up-projection), so the
sweep asks whether the gated experts buy more than the rank they cost. Each h is one ``run_bench`` of
the ``inhernet`` method alone (same data, steps, optimiser and seeds); writes one contract JSON per h
and ``experts_sweep-<preset>-<budget>[-validation].md`` (atomically) with the command that made it.
With ``--split validation`` (what a default is chosen on) each run is scored at its end on a validation split
carved from the training data, mean ± s.e. over the seeds, and "better" is said only beyond 2 s.e.

    OMP_NUM_THREADS=2 python -m inhernet_bench.scripts.experts_sweep --preset mnist-cnn --budget 0.1 --seeds 3 \
        --steps 300 --split validation
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from inhernet._atomic import atomic_write
from inhernet_bench import BenchConfig, run_bench, write_json
from inhernet_bench.scripts import RESULTS
from inhernet_bench.stats import score, verdict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mnist-cnn")
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--experts", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=BenchConfig.lr)
    ap.add_argument("--split", choices=("test", "validation"), default="test",
                    help="score on the test split (the older tables) or on a validation split of the training data")
    ap.add_argument("--out", type=Path, default=RESULTS / "experts")
    args = ap.parse_args(argv)
    suffix = "-validation" if args.split == "validation" else ""

    rows = []
    for h in args.experts:
        cfg = BenchConfig(
            preset=args.preset, budget=args.budget, experts=h, seeds=tuple(range(args.seeds)), steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, methods=("inhernet",), progress=False, curve_split=args.split,
        )
        result = run_bench(cfg, log=lambda line: print(line, flush=True))
        write_json(result, args.out / f"{args.preset}-{args.budget}-h{h}{suffix}.json")
        rows.append((h, result))

    metric = rows[0][1]["metric"]
    teacher = rows[0][1]["teacher"]
    if args.split == "validation":  # an accuracy's binomial error on the examples its curve was measured on
        n_val = min(cfg.curve_examples, cfg.val_examples) if "accuracy" in metric else None
        lines = validation_rows(rows, metric, n_val)
    else:
        lines = test_rows(rows, metric)
    threads = os.environ.get("OMP_NUM_THREADS")
    command = (f"OMP_NUM_THREADS={threads} " if threads else "") + "python -m inhernet_bench.scripts.experts_sweep " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    text = (
        f"# Experts sweep: {args.preset} at budget {args.budget} of the teacher's parameters\n\n"
        f"Command: `{command}`\n\nTeacher: {teacher['params']:,} params, {metric} {teacher['metric']:.4f}. "
        f"Every row: InherNet (whitened init, energy allocation), {args.steps} KD steps at batch "
        f"{args.batch_size}, lr {args.lr:g}, seeds 0..{args.seeds - 1}; {rows[0][1]['machine']}.\n\n" + "\n".join(lines) + "\n"
    )
    out = args.out.parent / f"experts_sweep-{args.preset}-{args.budget}{suffix}.md"
    atomic_write(out, text)
    print(text + f"\nwrote {out}")
    return 0


def validation_rows(rows: list[tuple[int, dict]], metric: str, n_val: int | None) -> list[str]:
    """The table of a sweep scored on validation: each h's score at the end of its runs, mean ± s.e. over the
    seeds (plus, for an accuracy, the binomial error of ``n_val`` examples), and how it compares with h = 1 (the default): "better"/"worse" only beyond 2 s.e., else "tie"."""
    def at_end(method: dict) -> list[float]:
        return [run["curve_end"] for run in method["per_seed"]]

    base = score(at_end(rows[0][1]["methods"][0]), n_val)
    lines = [f"| h | params | MACs | mean rank | validation {metric} at the end (mean ± s.e.) | "
             f"against h = {rows[0][0]} | ms/step |", "|---:|---:|---:|---:|---:|---|---:|"]
    for h, result in rows:
        m = result["methods"][0]
        got = score(at_end(m), n_val)
        compared = "" if h == rows[0][0] else verdict(got, base, result["higher_is_better"])
        lines.append(f"| {h} | {m['params']:,} | {m['macs']:,} | {mean_rank(m):.1f} | {got.text()} | {compared} | "
                     f"{m['sec_per_step'] * 1000:.1f} |")
    return lines


def mean_rank(method: dict) -> float:
    return sum(method["ranks"].values()) / max(len(method["ranks"]), 1)


def test_rows(rows: list[tuple[int, dict]], metric: str) -> list[str]:
    """The table of a sweep scored on the test split (the format of the older result files)."""
    lines = [
        f"| h | params | MACs | mean rank | zero-shot {metric} | final {metric} (mean ± std) | experts merged | ms/step |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for h, result in rows:
        m = result["methods"][0]
        merged = f"{m['merged_mean']:.4f}" if "merged_mean" in m else ""
        lines.append(
            f"| {h} | {m['params']:,} | {m['macs']:,} | {mean_rank(m):.1f} | {m['zero_shot']:.4f} | "
            f"{m['metric_mean']:.4f} ± {m['metric_std']:.4f} | {merged} | {m['sec_per_step'] * 1000:.1f} |"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
