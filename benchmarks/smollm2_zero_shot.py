"""Zero-shot perplexity of SmolLM2-135M inherited at a budget: init x calibration x allocation x experts.

    OMP_NUM_THREADS=1 python benchmarks/smollm2_zero_shot.py --budget 0.8 --floor 0.25

Every row is ``inherit(teacher, InherConfig(...), calib=preset.calib(32))`` (32 BBC training blocks of 128
tokens) evaluated, without any training, on the preset's 16 test blocks (2,048 tokens). A sequential row
reuses the ranks of the one-pass row with the same allocation: both allocate from the teacher's own
spectra, so the plans are the same, and only the factors differ. The one-pass rows share one
calibration pass and decomposition (memoised here: they differ only in the ranks they keep). Then the
sequential rows, one ``sequential-corrected`` row (each layer aimed at the teacher's outputs), the best
h = 1 row is repeated with h = 3 experts, and plain SVD comes last. Writes ``smollm2-zero-shot-<budget>.json`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import inhernet.surgery
from inhernet import InherConfig, evaluate, inherit
from inhernet._atomic import atomic_write
from inhernet.presets.registry import get_preset


def memoise_decompose() -> None:
    """Make ``inherit`` reuse the full-rank factors of an earlier call with the same init and calibration."""
    original = inhernet.surgery.decompose
    cache: dict[tuple[Any, ...], Any] = {}

    def decompose(model, candidates, config, calib, *, progress=True):
        key = (id(model), config.init, config.damping, id(calib), config.include, config.exclude)
        if key not in cache:
            cache[key] = original(model, candidates, config, calib, progress=progress)
        return cache[key]

    inhernet.surgery.decompose = decompose


def rank_stats(student: torch.nn.Module) -> tuple[float, int]:
    """The smallest rank ratio r/k over the factorised layers, and how many are below 10% of full rank."""
    rows = student.inhernet_plan.factorised
    ratios = [r.rank / r.max_rank for r in rows]
    return min(ratios), sum(x < 0.1 for x in ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=0.8)
    parser.add_argument("--floor", type=float, default=0.25, help="min_rank_ratio of the floored allocation")
    parser.add_argument("--calib", type=int, default=32, help="calibration blocks")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    memoise_decompose()

    preset = get_preset("smollm2-bbc")
    teacher = preset.teacher()
    calib = preset.calib(args.calib)
    _, test = preset.data(4)
    start = time.perf_counter()
    teacher_ppl = evaluate(teacher, test, "perplexity")["perplexity"]
    teacher_params = sum(p.numel() for p in teacher.parameters())
    print(f"teacher: {teacher_params:,} params, perplexity {teacher_ppl:.3f} ({time.perf_counter() - start:.0f} s)",
          flush=True)

    allocations = {"energy": {"allocation": "energy"}, "uniform": {"allocation": "uniform"},
                   f"energy, floor {args.floor}": {"allocation": "energy", "min_rank_ratio": args.floor}}
    rows: list[dict[str, Any]] = []
    plans: dict[str, Any] = {}
    out = Path(args.out)
    stem = f"smollm2-zero-shot-{args.budget}"

    def run(label: str, allocation: str, experts: int = 1, **overrides: Any) -> dict[str, Any]:
        cfg = InherConfig(budget=args.budget, experts=experts, **allocations[allocation], **overrides)
        sequential = overrides.get("calibration", "one-pass") != "one-pass"
        reuse = plans.get(allocation) if sequential and experts == 1 else None
        t0 = time.perf_counter()
        student = inherit(teacher, cfg, calib=None if cfg.init == "svd" else calib, plan=reuse, progress=False)
        inherit_s = time.perf_counter() - t0
        if cfg.init == "whiten" and cfg.calibration == "one-pass" and experts == 1:
            plans[allocation] = student.inhernet_plan
        t0 = time.perf_counter()
        ppl = evaluate(student, test, "perplexity")["perplexity"]
        low, starved = rank_stats(student)
        row = {
            "init": label, "allocation": allocation, "experts": experts,
            "params": sum(p.numel() for p in student.parameters()), "perplexity": ppl,
            "ratio_to_teacher": ppl / teacher_ppl, "min_rank_ratio": low, "layers_below_10pct": starved,
            "inherit_s": round(inherit_s, 1), "eval_s": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(out, stem, args, teacher_params, teacher_ppl, rows)
        return row

    # Most informative first: every row is written as soon as it is measured.
    for allocation in allocations:
        run("whiten, one-pass", allocation)
    floor = f"energy, floor {args.floor}"
    for allocation in (floor, "energy", "uniform"):
        run("whiten, sequential", allocation, calibration="sequential")
    run("whiten, sequential-corrected", floor, calibration="sequential-corrected")
    # h = 3 for the best h = 1 recipe that the budget can hold (a rank floor may not fit three experts).
    for best in sorted((r for r in rows if r["init"] != "svd"), key=lambda r: r["perplexity"]):
        try:
            run(best["init"], best["allocation"], experts=3, calibration=best["init"].split(", ")[1])
            break
        except ValueError as err:
            print(f"h = 3 with {best['init']}, {best['allocation']}: {err}", flush=True)
    run("svd", "energy", init="svd")
    print(f"done in {time.perf_counter() - start:.0f} s")


def write(out: Path, stem: str, args: argparse.Namespace, teacher_params: int, teacher_ppl: float,
          rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result = {"preset": "smollm2-bbc", "budget": args.budget, "calib_blocks": args.calib,
              "teacher": {"params": teacher_params, "perplexity": teacher_ppl}, "rows": rows,
              "torch": torch.__version__}
    atomic_write(out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    command = " ".join(["OMP_NUM_THREADS=1 python benchmarks/smollm2_zero_shot.py", *sys.argv[1:]])
    lines = [
        f"### smollm2-bbc zero-shot at budget {args.budget} (no training)",
        "",
        f"Command: `{command}`. Calibration: {args.calib} BBC training blocks of 128 tokens; perplexity on the "
        "preset's 16 test blocks (2,048 tokens). Tied embeddings stay dense, so the cut comes from the decoder.",
        "",
        "| init | allocation | h | params | perplexity | x teacher | min r/k | layers < 10% rank | inherit s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| teacher | | | {teacher_params:,} | {teacher_ppl:.2f} | 1.00 | | | |",
    ]
    for r in rows:
        lines.append(
            f"| {r['init']} | {r['allocation']} | {r['experts']} | {r['params']:,} ({r['params'] / teacher_params:.0%}) "
            f"| {r['perplexity']:.2f} | {r['ratio_to_teacher']:.2f} | {r['min_rank_ratio']:.3f} | "
            f"{r['layers_below_10pct']} | {r['inherit_s']:.0f} |"
        )
    atomic_write(out / f"{stem}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
