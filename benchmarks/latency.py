"""Inference latency of a preset's teacher against its inherited models and kd-student, next to their MACs.

Models (same ranks for every inherited one: the plan of ``--budget`` with ``--experts`` experts):

* ``teacher``: the preset's teacher (``--preset``, default ``mnist-cnn``);
* ``inherited h=H fused``: the InherNet blocks as shipped: one matmul / 1x1 conv over the h stacked,
  gate-scaled copies of the rank-r features;
* ``inherited h=H loop``: the same weights computed the naive way, one product per expert, scaled by
  its gate and summed (written here only, for the comparison);
* ``inherited h=1``: the same ranks without experts (what ``merge_experts`` deploys);
* ``kd-student``: the preset's conventional student with at least the inherited model's parameters.

Latency is the median over ``--repeats`` timed forward passes after ``--warmup`` untimed ones (the
models timed in turn, round robin), under ``torch.inference_mode()``, at batch 1 and 256 (default), on
real inputs from the preset's calibration data (repeated to the batch size), with one CPU thread by default
(``--threads``: on a busy 2-core machine, two threads' synchronisation made small-batch timings
erratic by up to 10x). Ratios are to the teacher; MACs are counted by ``inhernet.deploy.count_macs``.
Writes ``benchmarks/results/latency-<preset>.md`` (atomically) with the command that produced it.

    python benchmarks/latency.py                  # mnist-cnn, ~1 min on 2 CPUs
    python benchmarks/latency.py --preset tweets-minilm --budget 0.5 --batches 1 64
    python benchmarks/latency.py --quick          # smoke run
    python benchmarks/latency.py --device cuda    # on a GPU (synchronised timing)
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inhernet import InherBlock, InherConfig, InherConv, inherit
from inhernet._atomic import atomic_write
from inhernet.batches import move_batch
from inhernet.deploy import count_macs
from inhernet.presets.registry import get_preset
from inhernet.surgery import replace_module

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class LoopExperts(nn.Module):
    """A block's forward with one product per expert: ``sum_i g_i * (B_i z) + b`` (the naive way)."""

    def __init__(self, block: InherBlock) -> None:
        super().__init__()
        self.down, self.gate = block.down, block.gate
        self.conv = isinstance(block, InherConv)
        experts = block.expert_weights()  # (h, m, r), each expert contiguous
        if self.conv:
            experts = experts.reshape(*experts.shape, *([1] * (block.up.weight.dim() - 2)))
        self.experts = nn.Parameter(experts, requires_grad=False)
        self.bias = block.up.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.down(x)
        if self.conv:
            g = torch.softmax(self.gate(z.mean(dim=tuple(range(2, z.dim())))), dim=-1)  # (N, h)
            g = g.reshape(*g.shape, *([1] * (z.dim() - 2)))
            conv = F.conv2d if z.dim() == 4 else F.conv1d
            y = sum(g[:, i : i + 1] * conv(z, self.experts[i]) for i in range(self.experts.shape[0]))
        else:
            g = torch.softmax(self.gate(z), dim=-1)  # (..., h)
            y = sum(g[..., i : i + 1] * F.linear(z, self.experts[i]) for i in range(self.experts.shape[0]))
        return (
            y
            if self.bias is None
            else y + (self.bias.view(-1, *([1] * (z.dim() - 2))) if self.conv else self.bias)
        )


def loop_variant(model: nn.Module) -> nn.Module:
    looped = copy.deepcopy(model)
    for name, block in [(n, m) for n, m in looped.named_modules() if isinstance(m, InherBlock)]:
        if block.gate is not None:
            looped = replace_module(looped, name, LoopExperts(block))
    return looped


def batch_of(calib: list, size: int):
    """``size`` examples from the calibration batches (tensors or dicts), repeated if there are fewer."""
    first = calib[0]
    if isinstance(first, dict):
        keys = [k for k, v in first.items() if isinstance(v, torch.Tensor)]
        joined = {k: torch.cat([b[k] for b in calib]) for k in keys}
        n = next(iter(joined.values())).shape[0]
        index = torch.arange(size) % n
        return {k: v[index] for k, v in joined.items()}
    joined = torch.cat(list(calib))
    return joined[torch.arange(size) % joined.shape[0]]


def call(model: nn.Module, x):
    return model(**x) if isinstance(x, dict) else model(x)


def median_ms(models: dict[str, nn.Module], x, warmup: int, repeats: int) -> dict[str, float]:
    """Median wall time (ms) of one forward pass per model, the models timed in turn (round robin), so a
    change in the machine's load hits every model alike."""
    device = next(next(iter(models.values())).parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                call(model, x)
        sync()
        for _ in range(repeats):
            for name, model in models.items():
                t0 = time.perf_counter()
                call(model, x)
                sync()
                times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mnist-cnn")
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument(
        "--repeats", type=int, default=0, help="timed passes per point (default: 300 at batch 1, 30 at 256)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: stable timings on a shared CPU; 0 = torch's default)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/latency-<preset>.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    preset = get_preset(args.preset)
    out = args.out or RESULTS / f"latency-{args.preset}.md"
    teacher = preset.teacher().to(device)
    calib = preset.calib(max(args.batches))
    fused = inherit(
        teacher, InherConfig(budget=args.budget, experts=args.experts, init="svd"), progress=False
    )
    plan = fused.inhernet_plan
    single = inherit(
        teacher, InherConfig(budget=args.budget, experts=1, init="svd"), plan=plan, progress=False
    )
    models = {
        "teacher": teacher,
        f"inherited h={args.experts} fused": fused,
        f"inherited h={args.experts} loop": loop_variant(fused),
        "inherited h=1 (same ranks)": single,
    }
    if preset.student is not None:
        models["kd-student"] = preset.student(n_params(fused)).to(device)
    for m in models.values():
        m.eval()
    probe = move_batch(batch_of(calib, 4), device)
    with torch.no_grad():
        ref = logits(call(fused, probe))
        loop_err = float((logits(call(models[f"inherited h={args.experts} loop"], probe)) - ref).abs().max())
    one = move_batch(batch_of(calib, 1), device)
    macs = {name: count_macs(m, one) for name, m in models.items()}
    lat: dict[str, dict[int, float]] = {name: {} for name in models}
    for b in args.batches:
        x = move_batch(batch_of(calib, b), device)
        repeats = args.repeats or (300 if b <= 8 else 30)
        warmup = args.warmup
        if args.quick:
            repeats, warmup = max(3, repeats // 20), 3
        for name, ms in median_ms(models, x, warmup, repeats).items():
            lat[name][b] = ms
            print(f"{name:32s} batch {b:4d}: {ms:8.3f} ms", flush=True)

    ranks = ", ".join(f"{k}: {v}" for k, v in plan.ranks().items())
    head = "| model | params | MACs (batch 1) | MACs / teacher |" + "".join(
        f" ms @ batch {b} | / teacher |" for b in args.batches
    )
    lines = [head, "|" + " --- |" * (4 + 2 * len(args.batches))]
    for name, m in models.items():
        row = f"| {name} | {n_params(m):,} | {macs[name]:,} | {macs[name] / macs['teacher']:.3f} |"
        for b in args.batches:
            row += f" {lat[name][b]:.3f} | {lat[name][b] / lat['teacher'][b]:.2f} |"
        lines.append(row)
    table = "\n".join(lines)
    fused_name, loop_name = f"inherited h={args.experts} fused", f"inherited h={args.experts} loop"
    verdict = "; ".join(
        f"batch {b}: fused {lat[fused_name][b]:.3f} ms vs loop {lat[loop_name][b]:.3f} ms "
        f"({'fused' if lat[fused_name][b] < lat[loop_name][b] else 'loop'} faster, "
        f"x{max(lat[fused_name][b], lat[loop_name][b]) / min(lat[fused_name][b], lat[loop_name][b]):.2f})"
        for b in args.batches
    )
    print("\n" + table + "\n\n" + verdict)
    command = "python benchmarks/latency.py" + (
        ""
        if argv is None and len(sys.argv) == 1
        else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    cpu = _cpu_name()
    hw = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {cpu}, {torch.get_num_threads()} torch threads ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end)"
    )
    text = f"""# Inference latency: {args.preset} teacher vs inherited models and kd-student

Command: `{command}`
Date: {dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}; torch {torch.__version__}; {hw}; float32, eager, `torch.inference_mode()`.
Latency: median of the timed forward passes after warm-up, the models timed in turn (round robin); inputs from the preset's calibration data.
Inherited models: budget {args.budget} of the teacher's parameters, plain SVD init, energy allocation; the same ranks
for all ({ranks}). MACs from `inhernet.deploy.count_macs` (PyTorch's FLOP counter / 2; the gate's softmax and
scaling are element-wise and not counted).
The loop variant computes each expert's product separately (max |loop - fused| on a probe: {loop_err:.2e}).

{table}

Fused vs per-expert loop: {verdict}.
"""
    atomic_write(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
