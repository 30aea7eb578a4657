"""Step times on SmolLM2 (issue 11): plain fine-tuning of the teacher vs InherNet KD, live teacher vs top-k cache.

    OMP_NUM_THREADS=2 python -m inhernet_bench.scripts.smollm2_step_time --budget 0.8 --calib-blocks 8 --reps 5

In ONE process, on the same BBC training batches (``--batch-size`` 4 x 128 tokens) and ``--threads`` (2):

* ``plain``: a fine-tuning step of (a copy of) the SmolLM2 teacher: forward, LM cross-entropy, backward, AdamW;
* ``kd-live``: an InherNet KD step as ``distill`` takes it when the teacher runs live (``smollm2-bbc``
  before the cache): student forward and backward, the teacher's forward under ``no_grad``, ``kd_loss``;
* ``kd-topk``: the same KD step with the teacher's top-``k`` tokens read from a cache (``precompute_teacher_topk``,
  built once beforehand and timed separately), ``topk_kd_loss``; the teacher does not run.

Every step is what ``DistillModule.training_step`` does (same losses, T = 4, alpha = 0.9, the optimiser
``distill`` builds, gradient clipping at 1), without Lightning's bookkeeping. The three are interleaved
(the order rotates every repetition) after one warm-up step each, so machine load hits them alike; the
table reports medians and the ratios to ``plain`` (the issue's target: a KD step within 1.5x of it).

The student is ``inherit(teacher, InherConfig(budget=..., init="whiten"))`` (sequential calibration, the
causal-LM default) on ``--calib-blocks`` training blocks: 8 by default, not the bench's 32 or more, because
only its shapes matter for the step time and sequential calibration costs minutes per 32 blocks.

Writes ``smollm2-step-time.json`` and ``.md`` under ``--out`` (atomically, with the command). ``--tiny``
swaps in a random 2-layer Llama and random tokens (no assets; a < 1 minute smoke test of the script).

Runtime on 2 threads: loading the teacher ~0.5 min, inherit with 8 calibration blocks ~1-2 min, the cache
for ``--batches`` x 4 blocks ~10 s, then ``3 x (reps + 1)`` steps of ~7-15 s: about 5-7 min at ``--reps 5``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from inhernet import InherConfig, inherit
from inhernet._atomic import atomic_write
from inhernet.batches import forward_batch, logits_of
from inhernet.distillation import (
    DistillConfig,
    DistillModule,
    kd_loss,
    precompute_teacher_topk,
    topk_kd_loss,
)
from inhernet_bench.scripts import RESULTS

VARIANTS = ("plain", "kd-live", "kd-topk")
RESULT = "smollm2-step-time"


def _tiny() -> tuple[nn.Module, Any, list[dict[str, torch.Tensor]]]:
    """A random 2-layer Llama, random 128-token blocks and calibration batches (the smoke test)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from inhernet_bench.presets.smollm2 import LMBlocks

    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    blocks = torch.randint(0, 512, (64, 128), generator=torch.Generator().manual_seed(0))
    calib = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in blocks[:8].split(4)]
    return LlamaForCausalLM(config).eval(), LMBlocks(blocks), calib


def _smollm2(calib_blocks: int, n_blocks: int) -> tuple[nn.Module, Any, list[dict[str, torch.Tensor]]]:
    from inhernet_bench.presets import smollm2
    from inhernet_bench.presets.registry import get_preset

    teacher = get_preset("smollm2-bbc").teacher()
    return teacher, smollm2.bbc_blocks("train", limit=n_blocks), smollm2.smollm2_calib(calib_blocks)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Stepper:
    """One optimiser step of a model on a batch, as ``DistillModule.training_step`` + Lightning take it."""

    def __init__(self, model: nn.Module, teacher: nn.Module, config: DistillConfig):
        self.model, self.teacher, self.config = model, teacher, config
        # distill's own optimiser (parameter groups, AdamW); the module freezes the teacher only
        self.optimizer = DistillModule(model, teacher, config).configure_optimizers()["optimizer"]
        model.train()

    def __call__(self, batch: dict[str, Any], variant: str) -> float:
        """Seconds of one step of ``variant`` (one of ``VARIANTS``) on ``batch``."""
        cfg, start = self.config, time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        logits = logits_of(forward_batch(self.model, batch))
        labels = batch["labels"]
        if variant == "plain":
            shift = logits[:, :-1].reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(shift, labels[:, 1:].reshape(-1), ignore_index=-100)
        elif variant == "kd-live":
            with torch.no_grad():
                teacher_logits = logits_of(forward_batch(self.teacher, batch))
            loss = kd_loss(logits, teacher_logits, labels, cfg.temperature, cfg.alpha)
        else:
            loss = topk_kd_loss(logits, batch["teacher_logits"], labels, cfg.temperature, cfg.alpha)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        self.optimizer.step()
        return time.perf_counter() - start


def render(result: dict[str, Any]) -> str:
    rows = result["steps"]
    plain = rows["plain"]["median_s"]
    lines = [
        f"Command: `{result['command']}`",
        "",
        f"{'Tiny random Llama stand-in (--tiny), not SmolLM2' if result['tiny'] else 'SmolLM2'} step times, batch {result['batch_size']} x {result['block_size']} tokens, {result['threads']} "
        f"threads, medians of {result['reps']} interleaved steps each (one warm-up step each not counted). "
        f"Student: InherNet at budget {result['budget']} ({result['student_params']:,} of "
        f"{result['teacher_params']:,} params; inherit {result['inherit_s']:.0f} s on {result['calib_blocks']} "
        f"calibration blocks). KD: T = {result['temperature']:g}, alpha = {result['alpha']:g}.",
        "",
        "| step | median s | min s | max s | x plain |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {
        "plain": "plain fine-tuning of the teacher",
        "kd-live": "InherNet KD, live teacher",
        "kd-topk": f"InherNet KD, top-{result['k']} cache",
    }
    for name in VARIANTS:
        r = rows[name]
        lines.append(f"| {labels[name]} | {r['median_s']:.2f} | {min(r['times_s']):.2f} | {max(r['times_s']):.2f} "
                     f"| {r['median_s'] / plain:.2f} |")
    c = result["cache"]
    lines += [
        "",
        f"Top-{result['k']} cache: built in one teacher pass at {c['build_s_per_block']:.2f} s per block; "
        f"{c['bytes_per_block']:,} bytes per block of {result['block_size']} tokens (float16 log-probabilities, "
        f"int32 indices, float32 rest); 200 KD steps of {result['batch_size']} blocks: "
        f"{c['bytes_200_steps'] / 2**20:.0f} MiB, 1,000 steps: {c['bytes_1000_steps'] / 2**20:.0f} MiB "
        f"(full float32 logits: {c['full_logits_bytes_per_block'] / 2**20:.1f} MiB per block).",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=0.8)
    ap.add_argument("--calib-blocks", type=int, default=8, help="calibration blocks of 128 tokens for inherit")
    ap.add_argument("--k", type=int, default=128, help="teacher tokens kept per position (the preset's 128)")
    ap.add_argument("--reps", type=int, default=5, help="timed steps per variant (plus one warm-up step)")
    ap.add_argument("--batches", type=int, default=3, help="distinct batches, cycled")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--tiny", action="store_true", help="random 2-layer Llama and tokens: a smoke test")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.reps < 1 or args.batches < 1 or args.batch_size < 1 or args.threads < 1:
        ap.error("--reps, --batches, --batch-size and --threads must be >= 1")
    return args


def time_steps(args: argparse.Namespace, steppers: dict[str, Stepper], batches: list[Any]) -> dict[str, list[float]]:
    """Each variant's step times over ``args.reps`` rounds after a warm-up round, the variants taking
    turns first (a round's order rotates) on a cycle of ``batches``."""
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rep in range(args.reps + 1):  # rep 0: warm-up
        order = VARIANTS[rep % 3:] + VARIANTS[: rep % 3]
        batch = batches[rep % len(batches)]
        for name in order:
            seconds = steppers[name](batch, name)
            if rep:
                times[name].append(seconds)
        print(f"rep {rep}: " + ", ".join(f"{n} {times[n][-1] if rep else seconds:.2f} s" for n in order), flush=True)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = " ".join([f"OMP_NUM_THREADS={args.threads} python -m inhernet_bench.scripts.smollm2_step_time",
                        *map(shlex.quote, sys.argv[1:] if argv is None else argv)])

    n_blocks = args.batches * args.batch_size
    load = _tiny if args.tiny else lambda: _smollm2(args.calib_blocks, n_blocks)
    teacher, blocks, calib = load()
    teacher.eval().requires_grad_(False)
    print(f"teacher: {_params(teacher):,} params", flush=True)

    start = time.perf_counter()
    student = inherit(teacher, InherConfig(budget=args.budget, init="whiten", seed=0), calib=calib, progress=False)
    inherit_s = time.perf_counter() - start
    print(f"student: {_params(student):,} params, inherit {inherit_s:.0f} s", flush=True)

    config = DistillConfig(lr=args.lr, teacher_topk=args.k)  # T = 4, alpha = 0.9, clip 1: the bench's
    subset = torch.utils.data.Subset(blocks, range(n_blocks))
    start = time.perf_counter()
    cache = precompute_teacher_topk(teacher, subset, args.k, config.temperature, batch_size=args.batch_size)
    build_s = time.perf_counter() - start
    batches = list(DataLoader(cache, batch_size=args.batch_size, shuffle=False))
    block_size = int(batches[0]["input_ids"].shape[1])

    # the two KD variants take turns training one student (one AdamW state less in memory): the
    # weights' values do not change the time of a step
    plain = Stepper(copy.deepcopy(teacher).requires_grad_(True), teacher, config)
    kd = Stepper(student, teacher, config)
    steppers = {"plain": plain, "kd-live": kd, "kd-topk": kd}
    steps = {v: {"median_s": statistics.median(t), "times_s": t} for v, t in time_steps(args, steppers, batches).items()}
    per_block = cache.nbytes // n_blocks
    result: dict[str, Any] = {
        "command": command, "tiny": args.tiny, "threads": args.threads, "batch_size": args.batch_size,
        "block_size": block_size, "reps": args.reps, "budget": args.budget, "calib_blocks": args.calib_blocks,
        "k": args.k, "temperature": config.temperature, "alpha": config.alpha, "lr": args.lr,
        "teacher_params": _params(teacher), "student_params": _params(student), "inherit_s": inherit_s,
        "steps": steps,
        "ratios": {f"{v}/plain": steps[v]["median_s"] / steps["plain"]["median_s"] for v in VARIANTS[1:]},
        "cache": {
            "build_s_per_block": build_s / n_blocks, "bytes_per_block": per_block,
            "bytes_200_steps": per_block * 200 * args.batch_size, "bytes_1000_steps": per_block * 1000 * args.batch_size,
            "full_logits_bytes_per_block": block_size * int(teacher.config.vocab_size) * 4,
        },
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / f"{RESULT}.json", json.dumps(result, indent=1))
    atomic_write(args.out / f"{RESULT}.md", render(result))
    print(render(result), flush=True)
    return result


if __name__ == "__main__":
    main()
