"""What ``inherit()`` with whitening costs on this machine: wall and CPU time, and peak memory (RSS).

    OMP_NUM_THREADS=1 python -m inhernet_bench.scripts.compression_cost

Cases: all-MiniLM-L6-v2 (22.7M parameters, 128 sentences of at most 64 tokens) and SmolLM2-135M
(134.5M parameters, the ``smollm2-bbc`` preset's 32 calibration blocks of 128 tokens), each with
one-pass and sequential calibration, at budget 0.8 with h = 1 and uniform allocation (the default
``--allocation``): then both make exactly one whitened decomposition per layer, and the comparison
isolates how the statistics are gathered (energy allocation adds, in sequential mode, a first pass that
computes the teacher's spectra block by block). Every case runs in
a fresh subprocess (``--case NAME``): peak memory is that process's high-water mark (``VmHWM``) while
``inherit`` runs, after resetting it once the teacher and the calibration data are loaded (``clear_refs``;
where the kernel refuses, the whole process's peak, ``ru_maxrss``). Writes ``compression-cost.md`` and
``.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from inhernet._atomic import atomic_write
from inhernet_bench.scripts import RESULTS

CASES = ("minilm:one-pass", "minilm:sequential", "smollm2:one-pass", "smollm2:sequential")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux ``clear_refs`` 5); ``False`` where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _load(model: str) -> tuple[torch.nn.Module, list[Any]]:
    if model == "minilm":
        from inhernet_bench.presets.minilm import load_minilm, sample_sentences

        teacher, tokenizer = load_minilm()
        sentences = sample_sentences(128)
        calib = [
            dict(tokenizer(sentences[i : i + 32], padding=True, truncation=True, max_length=64, return_tensors="pt"))
            for i in range(0, len(sentences), 32)
        ]
        return teacher, calib
    from inhernet_bench.presets.registry import get_preset

    preset = get_preset("smollm2-bbc")
    return preset.teacher(), preset.calib(32)


def run_case(case: str, budget: float, allocation: str) -> dict[str, Any]:
    """Load, then time ``inherit`` and measure its peak RSS, in this process."""
    from inhernet import inherit
    from inhernet.experimental import ExperimentalConfig

    torch.set_num_threads(1)
    model, calibration = case.split(":")
    teacher, calib = _load(model)
    tokens = sum(int(b["attention_mask"].sum()) for b in calib)
    loaded_kib = _status_kib("VmRSS")
    exact = _reset_peak()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    cfg = ExperimentalConfig(budget=budget, experts=1, allocation=allocation, calibration=calibration, drop_blocks=0)
    student = inherit(teacher, cfg, calib=calib, progress=False)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak_kib = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "case": case, "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()), "calib_tokens": tokens,
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "rss_loaded_mib": round(loaded_kib / 1024),
        "peak_rss_mib": round(peak_kib / 1024), "extra_mib": round((peak_kib - loaded_kib) / 1024),
        "peak_is_inherit_only": exact,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=CASES, help="run one case in this process and print its JSON")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--budget", type=float, default=0.8)
    parser.add_argument("--allocation", choices=("uniform", "energy"), default="uniform")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.budget, args.allocation)), flush=True)
        return

    rows = []
    for case in args.cases.split(","):
        done = subprocess.run(
            [sys.executable, __file__, "--case", case, "--budget", str(args.budget), "--allocation", args.allocation],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"case {case} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "compression-cost.json", json.dumps(
        {"budget": args.budget, "allocation": args.allocation, "torch": torch.__version__, "rows": rows}, indent=2
    ) + "\n")
    command = " ".join(["OMP_NUM_THREADS=1 python -m inhernet_bench.scripts.compression_cost", *sys.argv[1:]])
    lines = [
        f"### Compression cost: `inherit()` with whitening, budget {args.budget}, {args.allocation} allocation, h = 1",
        "",
        f"Command: `{command}`. One CPU thread; wall time on a shared machine, CPU time of the process. "
        "Peak RSS is the process's high-water mark while `inherit` runs (teacher and calibration data loaded).",
        "",
        "| teacher | calibration | params | calib tokens | wall s | CPU s | RSS loaded MiB | peak RSS MiB | extra MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        model, calibration = r["case"].split(":")
        lines.append(
            f"| {model} | {calibration} | {r['teacher_params']:,} | {r['calib_tokens']:,} | {r['wall_s']:.0f} | "
            f"{r['cpu_s']:.0f} | {r['rss_loaded_mib']:,} | {r['peak_rss_mib']:,} | {r['extra_mib']:,} |"
        )
    atomic_write(out / "compression-cost.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
