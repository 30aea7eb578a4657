"""Zero-shot ablation of SmolLM2-135M inherited at 80% (and 86%) of its parameters: what each lever buys.

    python -m inhernet_bench.scripts.smollm2_zero_shot --budget 0.8 --calib 32 --rows all          # one part
    python -m inhernet_bench.scripts.smollm2_zero_shot --report                                    # the table only

Rows (``ROWS``) add the levers one at a time, all with h = 1 and whitened inheritance: one-pass whitening
with energy allocation; + a 25% rank floor; + sequential calibration (the causal-LM default); + allocation
by absolute whitened truncation loss (``allocation="loss"``); then two variants of the last row (loss
normalised within each matrix type, ``"loss-by-type"``; loss without the floor). Columns are calibration
sizes in blocks of 128 BBC training tokens (``--calib``: 32 = 4k, 128 = 16k, 512 = 64k tokens). Every cell
is ``inherit(teacher, InherConfig(budget=..., experts=1, drop_blocks=0, **row), calib=preset.calib(blocks))`` evaluated
with no training on the first ``--test-blocks`` test blocks (default 128: 16,384 held-out tokens), beside
the teacher's perplexity on the same blocks.

Resumable and splittable: each cell is written to ``smollm2-zero-shot.json`` (and the table to ``.md``)
under ``--out`` as soon as it is measured, keyed by its budget, row options, calibration and test blocks;
a rerun skips the cells already there, so the grid can be run in parts (``--budget``, ``--rows``,
``--calib``) and an interrupted part resumes. The teacher's perplexity is kept in the JSON too.

Inherit seconds are each cell's whole ``inherit()``: within one process the teacher's spectra (and for
one-pass rows the full-rank decomposition) are computed once per calibration size and reused by the next
rows (they depend on the teacher and the calibration only), and the time they took is added to every cell
that reused them, so that each cell reports what a lone ``inherit()`` call costs.

Runtime on 2 idle threads (estimates from SmolLM2 at ~2 blocks of 128 tokens per second, ~25 s of SVDs per
full decomposition; each part prints every cell's inherit_s and eval_s, so the first part rescales them):
the teacher's evaluation on 128 test blocks ~1 min (once: kept in the JSON); each cell's evaluation ~1 min;
per process and calibration size, the shared one-pass decomposition ~0.75 / 1.5 / 5 min and the sequential
spectra ~0.7 / 1.3 / 4 min (4k / 16k / 64k tokens); then a one-pass cell ~1.2 min, a sequential cell
~2 / 3 / 8.5 min. One budget's six rows: ~13 min at 4k, ~17 min at 16k; at 64k take two rows per part
(``--rows sequential,loss``: ~21 min).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from inhernet_bench.scripts import RESULTS

#: the rows: id -> (label, InherConfig options); each adds one lever to the row before it, the last two are
#: variants of "loss". A row's options are part of its cells' keys: changing them measures the row anew.
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "one-pass": ("one-pass whitening, energy allocation", {"calibration": "one-pass", "allocation": "energy", "min_rank_ratio": 0.0}),
    "floor": ("+ 25% rank floor", {"calibration": "one-pass", "allocation": "energy", "min_rank_ratio": 0.25}),
    "sequential": ("+ sequential calibration (default)", {"calibration": "sequential", "allocation": "energy", "min_rank_ratio": 0.25}),
    "loss": ("+ allocation by truncation loss", {"calibration": "sequential", "allocation": "loss", "min_rank_ratio": 0.25}),
    "loss-by-type": ("  variant: loss normalised per matrix type", {"calibration": "sequential", "allocation": "loss-by-type", "min_rank_ratio": 0.25}),
    "loss-no-floor": ("  variant: loss without the floor", {"calibration": "sequential", "allocation": "loss", "min_rank_ratio": 0.0}),
}
CALIB_BLOCKS = (32, 128, 512)
BUDGETS = (0.8, 0.86)
#: the issue's targets: zero-shot perplexity / teacher's, per budget
TARGETS = {0.8: ("<=", 2.0), 0.86: ("<", 2.43)}
RESULT = "smollm2-zero-shot"
BLOCK_TOKENS = 128


# -- resume bookkeeping (pure functions, tested in tests/test_smollm2_ablation.py) ---------------------------

def cell_key(budget: float, row: str, calib_blocks: int, test_blocks: int, options: dict[str, Any]) -> str:
    """What identifies a measured cell: a rerun with the same key skips it."""
    return json.dumps({"budget": budget, "row": row, "options": options, "calib_blocks": calib_blocks,
                       "test_blocks": test_blocks}, sort_keys=True)


def load_result(path: Path) -> dict[str, Any]:
    """The results so far (an empty skeleton when ``path`` does not exist)."""
    if path.exists():
        result = json.loads(path.read_text())
        if not isinstance(result.get("cells"), list) or not isinstance(result.get("teacher"), dict):
            raise ValueError(f"{path} is not a {RESULT} result (no 'cells' list / 'teacher' map); move it aside")
        return result
    return {"preset": "smollm2-bbc", "teacher": {}, "cells": []}


def pending(
    result: dict[str, Any], budgets: Iterable[float], rows: Iterable[str], calibs: Iterable[int], test_blocks: int
) -> list[tuple[float, str, int]]:
    """The ``(budget, row, calib_blocks)`` cells still to measure, smallest calibration first (its cells
    share the teacher's spectra within one process), in row order within one."""
    done = {c["key"] for c in result["cells"]}
    return [
        (b, r, n)
        for n in sorted(calibs) for b in budgets for r in rows
        if cell_key(b, r, n, test_blocks, ROWS[r][1]) not in done
    ]


def add_cell(result: dict[str, Any], cell: dict[str, Any]) -> None:
    """Put ``cell`` in ``result``, replacing one with the same key."""
    result["cells"] = [c for c in result["cells"] if c["key"] != cell["key"]] + [cell]


def render(result: dict[str, Any]) -> str:
    """The ablation table(s): one per number of test blocks; rows = levers per budget, columns = calibration
    tokens; a cell reads ``perplexity (x teacher, inherit s)``."""
    lines: list[str] = []
    for test_blocks in sorted({c["test_blocks"] for c in result["cells"]}):
        cells = [c for c in result["cells"] if c["test_blocks"] == test_blocks]
        calibs = sorted({c["calib_blocks"] for c in cells})
        teacher = result["teacher"].get(str(test_blocks), {})
        lines += [
            f"Zero-shot perplexity on {test_blocks * BLOCK_TOKENS:,} held-out BBC tokens ({test_blocks} blocks of "
            f"{BLOCK_TOKENS}); teacher {teacher.get('perplexity', float('nan')):.2f} on the same tokens. Each cell: "
            "perplexity (x teacher, seconds of the whole `inherit()`). h = 1, whitened.",
            "",
            "| budget | lever | " + " | ".join(f"{n * BLOCK_TOKENS // 1024}k calibration tokens" for n in calibs) + " |",
            "|---|---|" + "---:|" * len(calibs),
        ]
        for budget in sorted({c["budget"] for c in cells}):
            for row, (label, _) in ROWS.items():
                mine = {c["calib_blocks"]: c for c in cells if c["budget"] == budget and c["row"] == row}
                if mine:
                    lines.append(f"| {budget:g} | {label.strip()} | " + " | ".join(_cell(mine.get(n)) for n in calibs) + " |")
        lines.append("")
    targets = ", ".join(f"{b:g}: {op} {x}x" for b, (op, x) in TARGETS.items())
    lines.append(f"Targets (x teacher): {targets}.")
    return "\n".join(lines) + "\n"


def _cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return ""
    if "error" in cell:
        return f"n/a ({cell['error'][:60]})"
    return f"{cell['perplexity']:.2f} ({cell['ratio_to_teacher']:.2f}x, {cell['inherit_s']:.0f} s)"


# -- measuring -----------------------------------------------------------------------------------------------

class SharedSpectra:
    """Reuse, within one process, what ``inherit()`` measures from the teacher and the calibration only: the
    spectra of sequential rows and the full-rank decomposition of one-pass rows. Keeps one calibration's
    worth (a new calibration clears it) and the seconds each took, so that cells can report a lone call's
    cost. Installed by patching the measuring step ``inhernet.pipeline`` calls (``measure``)."""

    def __init__(self) -> None:
        import inhernet.pipeline as pipeline

        self.pipeline = pipeline
        self.calib: Any = None  # held, so that a new calibration is never mistaken for it
        self.cache: dict[tuple[Any, ...], tuple[Any, float]] = {}
        self.reused_s = 0.0  # the seconds of cached work the current inherit() call did not redo
        self.original = pipeline.measure
        pipeline.measure = self._wrap(pipeline.measure)

    def close(self) -> None:
        """Put ``inhernet.pipeline``'s own ``measure`` back."""
        self.pipeline.measure = self.original
        self.cache.clear()

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        from inhernet.spectra import allocation_needs_spectra

        def cached(model, layers, config, calib, *, keep_factors, progress=True):
            if calib is not self.calib:
                self.cache.clear()
                self.calib = calib
            key = (id(model), config.init, config.damping, config.calibration, config.include, config.exclude,
                   keep_factors, allocation_needs_spectra(config))
            if key in self.cache:
                value, seconds = self.cache[key]
                self.reused_s += seconds
                return value
            start = time.perf_counter()
            value = original(model, layers, config, calib, keep_factors=keep_factors, progress=progress)
            self.cache[key] = (value, time.perf_counter() - start)
            return value

        return cached


def rank_stats(student: torch.nn.Module) -> tuple[float, int]:
    """The smallest rank ratio r/k over the factorised layers, and how many are below 10% of full rank."""
    ratios = [r.rank / r.max_rank for r in student.inhernet_plan.factorised]
    return min(ratios), sum(x < 0.1 for x in ratios)


def measure_cell(
    teacher: torch.nn.Module, calib: list[Any], test: Any, teacher_ppl: float, shared: SharedSpectra,
    budget: float, row: str, calib_blocks: int, test_blocks: int,
) -> dict[str, Any]:
    """Inherit and evaluate one cell (an unreachable budget is recorded as an error, not raised)."""
    from inhernet import InherConfig, evaluate, inherit

    options = ROWS[row][1]
    cell: dict[str, Any] = {
        "key": cell_key(budget, row, calib_blocks, test_blocks, options), "budget": budget, "row": row,
        "options": options, "calib_blocks": calib_blocks, "calib_tokens": calib_blocks * BLOCK_TOKENS,
        "test_blocks": test_blocks, "threads": torch.get_num_threads(),
    }
    cfg = InherConfig(budget=budget, experts=1, drop_blocks=0, **options)  # rank cuts: the levers of this table
    shared.reused_s = 0.0
    start = time.perf_counter()
    try:
        student = inherit(teacher, cfg, calib=calib, progress=False)
    except ValueError as err:
        return {**cell, "error": str(err)}
    cell["inherit_s"] = round(time.perf_counter() - start + shared.reused_s, 1)
    cell["reused_s"] = round(shared.reused_s, 1)
    start = time.perf_counter()
    ppl = evaluate(student, test, "perplexity")["perplexity"]
    low, starved = rank_stats(student)
    return {
        **cell, "params": sum(p.numel() for p in student.parameters()), "perplexity": ppl,
        "ratio_to_teacher": ppl / teacher_ppl, "min_rank_ratio": low, "layers_below_10pct": starved,
        "eval_s": round(time.perf_counter() - start, 1), "config": student.inhernet_plan.config.to_dict(),
    }


def save(out: Path, result: dict[str, Any]) -> None:
    from inhernet._atomic import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{RESULT}.json", json.dumps(result, indent=2) + "\n")
    command = "python -m inhernet_bench.scripts.smollm2_zero_shot (parts: --budget/--rows/--calib; see the JSON cells)"
    atomic_write(out / f"{RESULT}.md", f"### smollm2-bbc zero-shot ablation\n\nCommand: `{command}`.\n\n" + render(result))


def _choice(value: str, known: Iterable[Any], cast: Callable[[str], Any], what: str) -> list[Any]:
    known = list(known)
    if value == "all":
        return known
    chosen = [cast(v) for v in value.split(",") if v]
    unknown = [v for v in chosen if cast is str and v not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; choose from {known} or 'all'")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="0.8", help="comma-separated budgets, or 'all' (0.8,0.86)")
    parser.add_argument("--rows", default="all", help=f"comma-separated row ids of {list(ROWS)}, or 'all'")
    parser.add_argument("--calib", default="32", help="comma-separated calibration blocks of 128 tokens "
                        "(32 = 4k, 128 = 16k, 512 = 64k), or 'all'")
    parser.add_argument("--test-blocks", type=int, default=128, help="test blocks of 128 tokens (>= 128: 16k)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--report", action="store_true", help="only rewrite the table from the JSON")
    args = parser.parse_args()
    budgets = _choice(args.budget, BUDGETS, float, "budgets")
    rows = _choice(args.rows, ROWS, str, "rows")
    calibs = _choice(args.calib, CALIB_BLOCKS, int, "calibration sizes")
    from inhernet_bench.presets.smollm2 import CALIB_MAX_BLOCKS

    if not all(1 <= n <= CALIB_MAX_BLOCKS for n in calibs):
        raise SystemExit(f"--calib takes 1..{CALIB_MAX_BLOCKS} blocks (the preset's cap), got {calibs}")
    out = Path(args.out)
    result = load_result(out / f"{RESULT}.json")
    todo = [] if args.report else pending(result, budgets, rows, calibs, args.test_blocks)
    print(f"{len(todo)} cell(s) to measure: {todo}", flush=True)
    if todo:
        run(result, todo, args.test_blocks, args.threads, out)
    save(out, result)
    print(render(result))


def run(result: dict[str, Any], todo: list[tuple[float, str, int]], test_blocks: int, threads: int, out: Path) -> None:
    torch.set_num_threads(threads)
    shared = SharedSpectra()
    try:
        _run(result, todo, test_blocks, out, shared)
    finally:
        shared.close()


def _run(result: dict[str, Any], todo: list[tuple[float, str, int]], test_blocks: int, out: Path,
         shared: SharedSpectra) -> None:
    from inhernet import evaluate
    from inhernet_bench.presets.registry import get_preset

    preset = get_preset("smollm2-bbc")
    teacher = preset.teacher()
    _, test = preset.data(4, test_blocks=test_blocks)
    known = result["teacher"].get(str(test_blocks))
    if known is None:
        start = time.perf_counter()
        known = {"perplexity": evaluate(teacher, test, "perplexity")["perplexity"],
                 "params": sum(p.numel() for p in teacher.parameters()), "eval_s": round(time.perf_counter() - start, 1)}
        result["teacher"][str(test_blocks)] = known
        save(out, result)
    print(f"teacher: perplexity {known['perplexity']:.3f} on {test_blocks} test blocks", flush=True)
    calib, calib_blocks = None, None
    for budget, row, blocks in todo:
        if blocks != calib_blocks:
            shared.cache.clear()  # the last calibration's spectra and factors: never needed again
            calib, calib_blocks = None, None
            calib, calib_blocks = preset.calib(blocks), blocks
        assert calib is not None
        cell = measure_cell(teacher, calib, test, known["perplexity"], shared, budget, row, blocks, test_blocks)
        add_cell(result, cell)
        save(out, result)
        print(json.dumps({k: v for k, v in cell.items() if k not in ("key", "config", "options")}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
