"""Short KD benchmark of the ``smollm2-bbc`` preset on a CPU: ``inhernet bench`` with cheap learning curves.

    OMP_NUM_THREADS=2 python -m inhernet_bench.scripts.smollm2_kd --budget 0.8 --steps 200 --batch-size 4 --lr 2e-4 \
        --part-dir benchmarks/parts/smollm2-0.8-200 --out benchmarks/results/smollm2-kd-200

The same run as ``inhernet bench --preset smollm2-bbc --seeds 1 ...`` (``run_bench``), except that the
learning curve is measured on one batch of test blocks at two points instead of ten on the whole test
split: every evaluation of SmolLM2 costs about a second per block on one CPU thread, and except that it
calibrates on ``--calib-blocks`` blocks (32: 4k tokens; the bench's default asks for the preset's cap, 512),
and that it shows each run's steps. Torch uses the threads that ``OMP_NUM_THREADS`` gives. With
``--part-dir`` every finished (method, seed) is kept, and a rerun (e.g. in the next session) skips it;
with ``--checkpoint-every N`` too, a run cut off mid-training continues from its last checkpoint. The
teacher's top-k cache is kept on disk (``inhernet_bench.topk_store``), so later processes skip its pass.
``--feature-weight`` adds hidden-state KD: each kept block's output against its teacher block's. The final
perplexities are on the preset's 128 test blocks (16k tokens). Writes the bench JSON and PNG, and the
markdown table (``bench_markdown.py``) beside them.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

from inhernet._atomic import atomic_write
from inhernet_bench import BenchConfig, bench_table, run_bench, write_json, write_plots
from inhernet_bench.scripts import RESULTS
from inhernet_bench.scripts.bench_markdown import render

#: the outputs of SmolLM2's decoder blocks (``*`` would also match every module inside them)
BLOCKS = ("model.layers.[0-9]", "model.layers.[0-9][0-9]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=0.8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each (method, seed) is its own part")
    parser.add_argument("--methods", default="inhernet,kd-student,layerdrop-kd,prune-kd,svd-kd")
    parser.add_argument("--curve-examples", type=int, default=8, help="test blocks per curve point")
    parser.add_argument("--calib-blocks", type=int, default=32,
                        help="calibration blocks of 128 tokens (the preset allows up to 512; each costs forward passes)")
    parser.add_argument("--drop-blocks", type=float, default=None,
                        help="InherConfig(drop_blocks=SHARE) of the InherNet rows (default: the causal-LM family's)")
    parser.add_argument("--part-dir", default=None, help="keep each finished method here; a rerun skips it")
    parser.add_argument("--feature-weight", type=float, default=0.0,
                        help="hidden-state KD: weight of the distance (--feature-loss) between each kept block's "
                        "output and its teacher block's (the teacher then runs live instead of from its top-k cache)")
    parser.add_argument("--feature-loss", choices=("mse", "cosine"), default="cosine",
                        help="distance of the hidden states (cosine: blind to the residual stream's growing scale)")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="with --part-dir: save each run's training state every N steps; a rerun continues it")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()

    cfg = BenchConfig(
        preset="smollm2-bbc", budget=args.budget, seeds=tuple(int(s) for s in args.seeds.split(",")),
        steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, methods=tuple(args.methods.split(",")), curve_points=2, curve_examples=args.curve_examples,
        calib_size=args.calib_blocks,
        distill_overrides={
            "feature_weight": args.feature_weight, "feature_patterns": BLOCKS, "feature_loss": args.feature_loss
        } if args.feature_weight else {}, part_dir=args.part_dir, checkpoint_every=args.checkpoint_every,
        progress=True,
        inherit_overrides={} if args.drop_blocks is None else {"drop_blocks": args.drop_blocks},
    )
    start = time.perf_counter()
    result = run_bench(cfg, log=lambda line: print(line, flush=True))
    out = Path(args.out)
    stem = f"smollm2-bbc-{args.budget}"
    write_json(result, out / f"{stem}.json")
    write_plots(result, out / f"{stem}.png")
    command = " ".join([f"OMP_NUM_THREADS={torch.get_num_threads()} python -m inhernet_bench.scripts.smollm2_kd", *sys.argv[1:]])
    # Linux reports ru_maxrss in KiB: the whole run's peak, the teacher and its top-k cache included
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    atomic_write(
        out / f"{stem}.md",
        f"Command: `{command}`\n\nPeak resident memory of the process: {peak_gib:.2f} GiB\n\n" + render(result),
    )
    from rich.console import Console

    Console().print(bench_table(result))
    print(f"wrote {out / stem}.json/.png/.md in {time.perf_counter() - start:.0f} s; peak RSS {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
