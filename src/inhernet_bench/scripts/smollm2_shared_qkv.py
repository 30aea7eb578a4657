"""Zero-shot: SmolLM2's q/k/v (and gate/up) factorised jointly, one shared down-projection per block, against
separate factorisations at equal parameters.

    python -m inhernet_bench.scripts.smollm2_shared_qkv                       # 4k calibration, 4k test tokens, 1 thread
    python -m inhernet_bench.scripts.smollm2_shared_qkv --variants separate,qk,qk+gate-up --out benchmarks/results/shared-qk

Layers that read the same input ``X`` (a block's q/k/v; its gate/up) can share one down-projection: the
whitened SVD of the stacked ``[W_q; W_k; W_v] S`` (``S S^T = X X^T / N``, the same statistics each layer's
own whitened SVD uses) gives the rank-r ``V`` minimising ``sum_i ||(W_i - U_i V) X||^2``, with one
``V`` (r x d_in) and one ``U_i`` (d_i x r) per layer: ``r (d_in + sum_i d_i)`` parameters instead of
``sum_i r_i (d_in + d_i)``. The shared rank spends exactly the separate layers' parameters (rounded down):
``r = floor(sum_i r_i (d_in + d_i) / (d_in + sum_i d_i))``, where a layer the plan keeps dense joins its group
at its dense cost ``d_i d_in`` (at 80% SmolLM2's plan keeps every v_proj and some k_proj and up_proj dense).

Recipe: the ablation's best 4k row (``inhernet_bench.scripts.smollm2_zero_shot``, row ``sequential``: h = 1, whitened,
energy allocation, 25% rank floor, sequential calibration) at 80% of the parameters. The separate
variant is plain ``inherit()``; the shared variants reuse its plan (the same ranks) and run the same
sequential calibration, in which each block's grouped layers are replaced by shared-down modules built from
that block's statistics (so later blocks are calibrated on what the shared layers output, as the separate
layers' blocks are on theirs). Each variant is evaluated on the same first ``--test-blocks`` test blocks as
the teacher. Per shared group the run also records the whitened truncation error of both factorisations
on the group's statistics (relative to the group's whitened output energy), averaged over blocks.

Measured with 1 niced thread on a shared 2-core machine (a benchmark on the other core): teacher evaluation
22 s, separate variant 120 s (with the teacher's spectra), each shared variant 71-80 s, each evaluation (32
blocks) 13-17 s: 9 min for the four default variants. ``--variants separate,qk,qk+gate-up`` (a follow-up:
q/k share, v stays as planned) takes ~7 min; ``separate`` always runs first (its plan is the others').
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inhernet.calibration import InputCovariance
from inhernet.decomposition import Factors, factorize
from inhernet.stack import replace_module
from inhernet_bench.scripts import RESULTS

#: groups of sibling layers that read one input, by their names relative to the block
GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "gate-up": ("mlp.gate_proj", "mlp.up_proj"),
    "qk": ("self_attn.q_proj", "self_attn.k_proj"),  # follow-up: v (dense in the 80% plan) left alone
}
#: variant -> the groups it shares
VARIANTS: dict[str, tuple[str, ...]] = {
    "separate": (), "qkv": ("qkv",), "gate-up": ("gate-up",), "both": ("qkv", "gate-up"),
    "qk": ("qk",), "qk+gate-up": ("qk", "gate-up"),
}
#: what a plain run measures (the follow-up variants are asked for with --variants)
DEFAULT_VARIANTS = ("separate", "qkv", "gate-up", "both")
#: the ablation's row "sequential" (its best 4k recipe)
RECIPE: dict[str, Any] = {"calibration": "sequential", "allocation": "energy", "min_rank_ratio": 0.25}
RESULT = "smollm2-shared-qkv"
BLOCK_TOKENS = 128


# -- the joint factorisation ------------------------------------------------------------------------------

def factorize_shared(
    weights: Sequence[torch.Tensor], cov: InputCovariance | None = None, damping: float = 1e-4
) -> tuple[Factors, list[int]]:
    """Whitened (or plain, without ``cov``) SVD of the stacked ``weights`` (each (d_i, n), one input):
    ``factors.down[:r]`` is the shared down-projection and ``factors.up[:, :r].split(sizes)`` the layers'
    up-projections, optimal at every rank r for ``sum_i ||(W_i - U_i V) X||^2``. Returns the factors and
    the row counts ``sizes``."""
    if not weights:
        raise ValueError("weights is empty: pass the matrices (d_i, n) of layers that read one input")
    widths = {w.shape[1] if w.dim() == 2 else None for w in weights}
    if len(widths) != 1 or None in widths:
        raise ValueError(f"weights must be 2-d with one input width n, got shapes {[tuple(w.shape) for w in weights]}")
    return factorize(torch.cat([w.detach() for w in weights]), cov, damping), [w.shape[0] for w in weights]


def shared_rank(ranks: Sequence[int | None], n: int, sizes: Sequence[int]) -> int:
    """The largest shared rank whose parameters ``r (n + sum(sizes))`` do not exceed the separate layers'
    (:func:`separate_params`), and at most the stack's full rank ``min(n, sum(sizes))``."""
    return min(separate_params(ranks, n, sizes) // (n + sum(sizes)), n, sum(sizes))


def separate_params(ranks: Sequence[int | None], n: int, sizes: Sequence[int]) -> int:
    """Weights of the group's layers as planned: ``r_i (n + d_i)`` for a factorised layer, ``d_i n`` for a
    dense one (rank ``None``). Biases are left out: both variants keep them."""
    return sum(m * n if r is None else r * (n + m) for r, m in zip(ranks, sizes, strict=True))


class SharedDownLinear(nn.Module):
    """``y = up(down(x))`` where ``down`` is one ``nn.Linear`` shared by the group's members (registered in
    each, counted once by ``model.parameters()``)."""

    def __init__(self, down: nn.Linear, up: nn.Linear) -> None:
        super().__init__()
        self.down, self.up = down, up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def shared_modules(
    factors: Factors, sizes: Sequence[int], rank: int, biases: Sequence[torch.Tensor | None],
    like: torch.Tensor,
) -> list[SharedDownLinear]:
    """The group's modules at ``rank``, with the dtype and device of ``like`` (a teacher weight)."""
    down_w, up_w = factors.truncated(rank)
    kw = {"dtype": like.dtype, "device": like.device}
    down = nn.Linear(down_w.shape[1], rank, bias=False, **kw)
    members = []
    with torch.no_grad():
        down.weight.copy_(down_w)
        for part, bias in zip(up_w.split(list(sizes)), biases, strict=True):
            up = nn.Linear(rank, part.shape[0], bias=bias is not None, **kw)
            up.weight.copy_(part)
            if bias is not None:
                up.bias.copy_(bias)
            members.append(SharedDownLinear(down, up))
    return members


def relative_errors(
    separate: Sequence[Factors], ranks: Sequence[int | None], joint: Factors, rank: int
) -> tuple[float, float]:
    """Whitened truncation error ``sum_i ||(W_i - W_i,r) X||^2`` of the separate factorisations (none for a
    dense layer, rank ``None``) and of the joint one, each relative to the group's whitened output energy
    ``sum_i ||W_i X||^2``."""
    total = float(joint.output_energy.sum())
    lost_separate = sum(float(f.output_energy[r:].sum()) for f, r in zip(separate, ranks, strict=True) if r is not None)
    return lost_separate / total, float(joint.output_energy[rank:].sum()) / total


def member_errors(
    separate: Sequence[Factors], ranks: Sequence[int | None], joint: Factors, sizes: Sequence[int], rank: int
) -> list[tuple[float, float]]:
    """Per layer of the group, ``(separate, joint)`` whitened truncation error relative to its own whitened
    output energy ``||W_i X||^2``. The joint error of layer i is the squared norm of its rows of the dropped
    columns of ``up`` (``W S = U Σ V^T`` with orthonormal ``V``)."""
    out = []
    for f, r, up in zip(separate, ranks, joint.up.split(list(sizes)), strict=True):
        energy = float(up.square().sum())
        lost_separate = 0.0 if r is None else float(f.energy[r:].sum())
        out.append((lost_separate / energy, float(up[:, rank:].square().sum()) / energy))
    return out


# -- grouping inside sequential calibration -----------------------------------------------------------------

class Sharing:
    """While active, sequential calibration builds each block's grouped layers as shared-down modules.

    Replaces ``inhernet.sequential._stage`` (the step that factorises one stage's layers from their
    statistics) by one that first takes the complete groups of the stage (every member planned, with
    ``ranks``) and hands the rest to the original. Records per group the shared rank and both errors.
    """

    def __init__(self, groups: Sequence[str], ranks: dict[str, int]) -> None:
        self.groups, self.ranks = [GROUPS[g] for g in groups], ranks
        self.records: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def active(self) -> Iterator[Sharing]:
        import inhernet.sequential as sequential

        original = sequential._stage
        sequential._stage = self._stage(original)
        try:
            yield self
        finally:
            sequential._stage = original

    def _stage(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def stage(model: nn.Module, layers: dict, stats: dict, damping: float) -> Iterator[Any]:
            grouped: set[str] = set()
            for prefix in sorted({name.rsplit(".", 2)[0] for name in layers if name.count(".") >= 2}):
                for group in self.groups:
                    members = self._members(model, [f"{prefix}.{member}" for member in group], layers, stats)
                    if members:
                        self._share(model, members, damping)
                        grouped.update(name for name, *_ in members)
            rest = {name: layer for name, layer in layers.items() if name not in grouped}
            yield from original(model, rest, stats, damping)

        return stage

    def _members(
        self, model: nn.Module, names: list[str], layers: dict, stats: dict
    ) -> list[tuple[str, nn.Module, Any, InputCovariance]] | None:
        """``(name, module, kind, statistics)`` per member of a group this stage can share, else ``None``.

        A group is shared when at least one member is planned (factorised) and has statistics; a member the
        plan keeps dense joins with its dense parameters and the statistics of a planned one (they read the
        same input). A planned member without statistics (it saw no input) leaves the group as it is.
        """
        from inhernet.kinds import kind_of

        seen = [n for n in names if n in layers and n in stats]
        if not seen or any(n in self.ranks and n not in seen for n in names):
            return None
        dense = [n for n in names if n not in self.ranks]
        modules = {n: model.get_submodule(n) for n in dense if _has(model, n)}
        if len(modules) != len(dense) or any(kind_of(m) is None for m in modules.values()):
            return None
        shared_cov = stats[seen[0]]
        members = []
        for n in names:
            if n in self.ranks:
                members.append((n, *layers[n], stats.pop(n)))
            else:
                members.append((n, modules[n], kind_of(modules[n]), shared_cov))
        return members

    def _share(self, model: nn.Module, group: list[tuple[str, nn.Module, Any, InputCovariance]], damping: float) -> None:
        """Put shared-down modules in place of ``group``'s layers ``(name, module, kind, statistics)``."""
        names = [name for name, *_ in group]
        ws = [kind.matrix(m) for _, m, kind, _ in group]
        joint, sizes = factorize_shared(ws, group[0][3], damping)  # one input: every member's statistics agree
        ranks = [self.ranks.get(n) for n in names]
        rank = shared_rank(ranks, ws[0].shape[1], sizes)
        separate = [factorize(w, cov, damping) for w, (*_, cov) in zip(ws, group, strict=True)]
        err_separate, err_shared = relative_errors(separate, ranks, joint, rank)
        per_layer = member_errors(separate, ranks, joint, sizes, rank)
        _, module, kind, _ = group[0]
        members = shared_modules(joint, sizes, rank, [k.bias(m) for _, m, k, _ in group], kind.weight(module))
        for name, member in zip(names, members, strict=True):
            replace_module(model, name, member)
        self.records.append({"layers": names, "ranks": ranks, "shared_rank": rank,
                             "err_separate": err_separate, "err_shared": err_shared,
                             "layer_errors": [{"separate": a, "shared": b} for a, b in per_layer]})


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


# -- measuring --------------------------------------------------------------------------------------------

def n_params(model: nn.Module) -> int:
    """Parameters, each shared tensor once."""
    return sum(p.numel() for p in model.parameters())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from inhernet import InherConfig, evaluate, inherit
    from inhernet_bench.presets.registry import get_preset

    torch.set_num_threads(args.threads)
    preset = get_preset("smollm2-bbc")
    teacher = preset.teacher()
    _, test = preset.data(4, test_blocks=args.test_blocks)
    calib = preset.calib(args.calib)
    start = time.perf_counter()
    teacher_ppl = evaluate(teacher, test, "perplexity")["perplexity"]
    result: dict[str, Any] = {
        "preset": "smollm2-bbc", "budget": args.budget, "recipe": RECIPE, "calib_blocks": args.calib,
        "test_blocks": args.test_blocks, "threads": args.threads,
        "teacher": {"perplexity": teacher_ppl, "params": n_params(teacher), "eval_s": round(time.perf_counter() - start, 1)},
        "variants": [],
    }
    print(json.dumps({"teacher": result["teacher"]}), flush=True)
    plan = None
    for variant in args.variants:
        start = time.perf_counter()
        sharing = Sharing(VARIANTS[variant], plan.ranks() if plan is not None else {})
        if plan is None:  # the first variant plans (the teacher's spectra); the others reuse its ranks
            if VARIANTS[variant]:
                raise SystemExit("the first variant must be 'separate': it makes the plan the others share")
            student = inherit(teacher, InherConfig(budget=args.budget, experts=1, drop_blocks=0, **RECIPE), calib=calib, progress=False)
            plan = student.inhernet_plan
        else:
            with sharing.active():
                student = inherit(teacher, plan=plan, calib=calib, progress=False)
        inherit_s = time.perf_counter() - start
        start = time.perf_counter()
        ppl = evaluate(student, test, "perplexity")["perplexity"]
        records = sharing.records
        row = {
            "variant": variant, "params": n_params(student), "perplexity": ppl, "ratio_to_teacher": ppl / teacher_ppl,
            "inherit_s": round(inherit_s, 1), "eval_s": round(time.perf_counter() - start, 1),
            "groups_shared": len(records),
            "err_separate": sum(r["err_separate"] for r in records) / len(records) if records else None,
            "err_shared": sum(r["err_shared"] for r in records) / len(records) if records else None,
            "groups": records,
        }
        result["variants"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "groups"}), flush=True)
        del student
    base = result["variants"][0]["params"]
    for row in result["variants"]:
        if row["params"] > base:
            raise AssertionError(f"{row['variant']} has {row['params']:,} parameters, more than separate's {base:,}")
    return result


def render(result: dict[str, Any], command: str) -> str:
    """The result table in markdown."""
    t = result["teacher"]
    lines = [
        "### smollm2-bbc: shared down-projection for q/k/v and gate/up, zero-shot",
        "",
        f"Command: `{command}`.",
        "",
        f"Budget {result['budget']:g}, recipe {json.dumps(result['recipe'])}, h = 1, whitened; "
        f"{result['calib_blocks'] * BLOCK_TOKENS:,} calibration tokens; perplexity on the first "
        f"{result['test_blocks'] * BLOCK_TOKENS:,} held-out BBC tokens ({result['test_blocks']} blocks of {BLOCK_TOKENS}); "
        f"teacher {t['perplexity']:.2f} ({t['params']:,} parameters) on the same tokens; {result['threads']} thread(s). "
        "Shared variants: the separate variant's plan, each complete group's shared rank spending at most its "
        "separate layers' parameters. Whitened error: the group's truncation error relative to its whitened "
        "output energy on its own statistics, separate -> shared, mean over the shared groups.",
        "",
        "| variant | params | perplexity | x teacher | vs separate | groups shared | whitened error (separate -> shared) | inherit s | eval s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    base = result["variants"][0]["perplexity"]
    for r in result["variants"]:
        err = "" if r["err_shared"] is None else f"{r['err_separate']:.3g} -> {r['err_shared']:.3g}"
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['perplexity']:.2f} | {r['ratio_to_teacher']:.2f}x | "
            f"{r['perplexity'] / base - 1:+.1%} | {r['groups_shared']} | {err} | {r['inherit_s']:.0f} | {r['eval_s']:.0f} |"
        )
    notes = [_layer_note(r) for r in result["variants"] if any("layer_errors" in g for g in r["groups"])]
    if notes:
        lines += ["", "Per layer, mean whitened error relative to the layer's own output energy (separate -> shared; "
                  "0 where the plan keeps the layer dense):", "", *notes]
    return "\n".join(lines) + "\n"


def _layer_note(row: dict[str, Any]) -> str:
    """``row``'s per-layer errors, averaged over blocks by the layer's name in the block."""
    errors: dict[str, list[tuple[float, float]]] = {}
    for group in row["groups"]:
        for name, err in zip(group["layers"], group.get("layer_errors", []), strict=False):
            errors.setdefault(name.rsplit(".", 1)[-1], []).append((err["separate"], err["shared"]))
    parts = [
        f"{layer} {sum(a for a, _ in errs) / len(errs):.3g} -> {sum(b for _, b in errs) / len(errs):.3g}"
        for layer, errs in errors.items()
    ]
    return f"- {row['variant']}: " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=0.8)
    parser.add_argument("--calib", type=int, default=32, help="calibration blocks of 128 tokens (32 = 4k)")
    parser.add_argument("--test-blocks", type=int, default=32, help="test blocks of 128 tokens (32 = 4k)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, 'separate' first: {list(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants or args.variants[0] != "separate":
        raise SystemExit(f"--variants: {unknown or args.variants} invalid; choose from {list(VARIANTS)}, 'separate' first")
    result = measure(args)
    from inhernet._atomic import atomic_write

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(["-m inhernet_bench.scripts.smollm2_shared_qkv", *sys.argv[1:]])
    atomic_write(out / f"{RESULT}.json", json.dumps(result, indent=2) + "\n")
    table = render(result, command)
    atomic_write(out / f"{RESULT}.md", table)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
