"""Zero-shot: SmolLM2-135M at 80% of its parameters by dropping whole blocks, by rank cuts, or by both.

    OMP_NUM_THREADS=2 python -m inhernet_bench.scripts.smollm2_drop_inherit --drop 0,2,4,7

For each ``k`` of ``--drop``: the ``k`` blocks of lowest Block Influence are dropped (``layerdrop-kd``'s
choice, :func:`inhernet_bench.baselines.layerdrop.drop_layers`), then what is left is inherited with the causal-LM
default recipe (sequential whitening, 25% rank floor, h = 1) at the *same* absolute budget: 80% of the
original teacher's parameters. ``k = 0`` is plain InherNet; a ``k`` whose dropped model is under the budget
alone is layer dropping only (nothing left to cut; recorded as such). Block Influence and the calibration
use the same ``--calib`` blocks of 128 BBC training tokens; the perplexity is on the preset's 128 test blocks
(16,384 tokens), beside the teacher's. Each finished ``k`` is kept in ``smollm2-drop-inherit.json`` under
``--out`` and skipped by a rerun.

The question it answers (issue 11): rank cuts spread over every block (InherNet) against whole blocks
removed (layerdrop-kd keeps 23 of 30 blocks at 82%): is a mix better than either, zero-shot?
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from inhernet_bench.scripts import RESULTS, shown

RESULT = "smollm2-drop-inherit"


def measure(teacher: torch.nn.Module, calib: list[Any], test: Any, budget: float, drop: int) -> dict[str, Any]:
    """Drop ``drop`` blocks by Block Influence, inherit the rest at ``budget`` of the teacher's parameters."""
    from inhernet import InherConfig, evaluate, inherit
    from inhernet_bench.baselines.layerdrop import drop_layers, layer_stack

    total = sum(p.numel() for p in teacher.parameters())
    target = int(budget * total)
    n = len(layer_stack(teacher)[1])
    start = time.perf_counter()
    dropped = drop_layers(teacher, keep=n - drop, by="importance", calib=calib) if drop else teacher
    kept_params = sum(p.numel() for p in dropped.parameters())
    cell: dict[str, Any] = {"drop": drop, "budget": budget, "dropped_params": kept_params}
    if kept_params <= target:
        student, cell["factorised"] = dropped, 0
    else:
        student = inherit(dropped, InherConfig(budget=target, experts=1, drop_blocks=0), calib=calib, progress=False)
        cell["factorised"] = len(student.inhernet_plan.factorised)
        cell["min_rank_ratio"] = min((r.rank / r.max_rank for r in student.inhernet_plan.factorised), default=1.0)
    cell["build_s"] = round(time.perf_counter() - start, 1)
    cell["params"] = sum(p.numel() for p in student.parameters())
    cell["perplexity"] = evaluate(student, test, "perplexity")["perplexity"]
    return cell


def render(result: dict[str, Any]) -> str:
    teacher = result["teacher"]
    lines = [
        f"Zero-shot perplexity on 16,384 held-out BBC tokens (teacher {teacher['perplexity']:.2f}), "
        f"{result['budget']:.0%} of the teacher's {teacher['params']:,} parameters; blocks dropped by Block "
        "Influence, the rest inherited (sequential whitening, 25% rank floor, h = 1), calibration on "
        f"{result['calib_blocks'] * 128:,} tokens.",
        "",
        "| blocks dropped | params after dropping | params | layers factorised | perplexity | x teacher | build s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in sorted(result["cells"], key=lambda c: c["drop"]):
        lines.append(
            f"| {c['drop']} | {c['dropped_params']:,} | {c['params']:,} ({c['params'] / teacher['params']:.1%}) | "
            f"{c['factorised']} | {c['perplexity']:.2f} | {c['perplexity'] / teacher['perplexity']:.2f}x | "
            f"{c['build_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drop", default="0,2,4,7", help="comma-separated numbers of blocks to drop")
    parser.add_argument("--budget", type=float, default=0.8)
    parser.add_argument("--calib", type=int, default=32, help="calibration blocks of 128 tokens (32 = 4k)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from inhernet import evaluate
    from inhernet._atomic import atomic_write
    from inhernet_bench.presets.registry import get_preset

    path = args.out / f"{RESULT}.json"
    result = json.loads(path.read_text()) if path.exists() else {"cells": []}
    if result["cells"] and (result["budget"], result["calib_blocks"]) != (args.budget, args.calib):
        raise SystemExit(f"{path} holds budget {result['budget']} / {result['calib_blocks']} calibration blocks; "
                         "pass those or another --out")
    result.update(budget=args.budget, calib_blocks=args.calib)
    preset = get_preset("smollm2-bbc")
    teacher = preset.teacher()
    _, test = preset.data(4, test_blocks=128)
    calib = preset.calib(args.calib)
    if "teacher" not in result:
        result["teacher"] = {"perplexity": evaluate(teacher, test, "perplexity")["perplexity"],
                             "params": sum(p.numel() for p in teacher.parameters())}
    done = {c["drop"] for c in result["cells"]}
    for drop in (int(k) for k in args.drop.split(",")):
        if drop in done:
            continue
        cell = measure(teacher, calib, test, args.budget, drop)
        result["cells"].append(cell)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(result, indent=2) + "\n")
        atomic_write(path.with_suffix(".md"), f"Command: `OMP_NUM_THREADS={torch.get_num_threads()} python "
                     f"-m inhernet_bench.scripts.smollm2_drop_inherit --drop {args.drop} --budget {args.budget} "
                     f"--calib {args.calib} --out {shown(args.out)}`\n\n" + render(result))
        print(json.dumps(cell), flush=True)
    print(render(result))


if __name__ == "__main__":
    main()
