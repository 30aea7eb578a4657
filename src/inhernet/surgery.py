"""``inherit()``: build the inherited network from a teacher."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from . import blockdrop
from .allocation import Profile, check_reachable
from .autoprune import choose
from .batches import forward_batch, head_rows, move_batch, rows_of
from .calibration import peek_example
from .config import InherConfig
from .costs.profile import latency_table
from .costs.table import LatencyCosts
from .decomposition import Factors
from .deploy.compact import deployed
from .discovery import Candidate, Unsupported, find_layers
from .kinds import LayerKind
from .layers import configure_gates
from .plan import Plan, make_plan, measure, open_costs, warn_if_bottlenecked, with_drop, with_prune
from .pruning import after_pruning, inner_config, prune_for, unpruned
from .sequential import sequential_calibrate
from .spectra import allocation_needs_spectra, decompose, layer_spectra, reiterable
from .stack import replace_module

__all__ = ["inherit", "replace_module"]


def inherit(
    model: nn.Module,
    config: InherConfig | None = None,
    calib: Iterable[Any] | None = None,
    *,
    plan: Plan | None = None,
    progress: bool = True,
    costs: LatencyCosts | None = None,
) -> nn.Module:
    """A new model in which every planned layer is an SVD-initialised InherNet block.

    Args:
        model: the teacher; it is not modified.
        config: what to inherit (default ``InherConfig()``: budget 0.25, whitened, energy allocation).
        calib: iterable of model input batches (tensors, ``(inputs, labels)`` tuples or dicts); required
            for ``init="whiten"``. A few thousand tokens / a few hundred images are typically enough.
            Under a MAC budget (``macs=``) it is required too, and its first batch, whole, is the
            example input whose MACs are budgeted.
            Under a latency budget (``latency=``) it is required too: its first batch, whole, is the
            example input that the teacher and the cost table's layers are timed at.
            With ``prune=`` it is required too: Torch-Pruning traces the model on its first batch, and
            ``prune="auto"`` scores each candidate student on it (:mod:`inhernet.autoprune`: KD steps on
            its first three quarters, the KL on the last, so at least 2 batches; zero-shot on all of it
            with ``prune_probe_steps=0``).
        plan: reuse the ranks of an earlier plan (e.g. to build an ablation with the same structure);
            a plan with pruning prunes the teacher again by its share (the same channels: L2 ranking).
        progress: show a progress bar while calibrating.
        costs: the cost table a latency budget is priced by (see :func:`inhernet.plan`); default a
            :class:`inhernet.CostTable` for the model's device and thread count. Unused otherwise.
            Under a latency budget the compact student is then timed against the teacher (interleaved) and
            planned again at a scaled budget if it measures outside :data:`LATENCY_CHECK_WINDOW` of it;
            ``student.inhernet_plan.latency_checks`` lists the checks.

    Returns:
        A deep copy of ``model`` with InherNet blocks in place of the planned layers. With
        ``init="whiten"`` or ``"svd"`` it computes the rank-r truncation of every layer at init
        (exactly the teacher with ``rank="full"``; exactly the pruned teacher with ``prune=``).
        ``student.inhernet_plan`` holds the plan (with ``prune=``, its ``prune`` record).
        With sequential calibration each block is whitened on inputs that passed the compressed
        earlier blocks (``calib`` is then iterated several times).
    """
    config = (config or (plan.config if plan is not None else InherConfig())).resolved(model)
    # a plan given decides the structure: its blocks, or every block
    if (plan.drop is not None) if plan is not None else config.drop_blocks:
        student = _inherit_dropped(model, config, calib, plan, progress, costs)
    elif config.latency is None or plan is not None:
        student = _inherit_planned(model, config, calib, plan, progress, costs)
    else:
        calib = list(calib) if calib is not None else None  # built again if the measured check asks for it
        student = _inherit_planned(model, config, calib, None, progress, costs)
        student = _within_measured_latency(model, config, calib, student, progress, costs)
    if plan is None:  # a plan given was warned about when it was made
        warn_if_bottlenecked(student.inhernet_plan)
    return student


def _inherit_dropped(
    model: nn.Module, config: InherConfig, calib: Iterable[Any] | None, plan: Plan | None, progress: bool,
    costs: LatencyCosts | None,
) -> nn.Module:
    """``inherit`` on the teacher without the blocks ``config.drop_blocks`` drops (or those ``plan`` dropped,
    with its ranks), at the same budget."""
    calib = list(calib) if calib is not None else None  # Block Influence reads it first
    if plan is not None:  # the plan's structure: the same blocks, its ranks
        assert plan.drop is not None
        record = plan.drop
        dropped = blockdrop.without_blocks(model, record.kept) if record.dropped else model
        inner = blockdrop.inner_config(plan.config, record)
        inner_plan = replace(plan, config=inner, drop=None, teacher_params=record.params)
        student = _inherit_planned(dropped, inner, calib, inner_plan, progress, costs)
        config = plan.config
    else:
        dropped, record = blockdrop.drop_for(config, model, calib)
        student = _inherit_planned(dropped, blockdrop.inner_config(config, record), calib, None, progress, costs)
    student.inhernet_plan = with_drop(student.inhernet_plan, config, record)
    return student


def _inherit_planned(
    model: nn.Module, config: InherConfig, calib: Iterable[Any] | None, plan: Plan | None, progress: bool,
    costs: LatencyCosts | None,
) -> nn.Module:
    """``inherit`` as its plan (or ``plan``) says, without the measured check of a latency budget."""
    if config.prune is not None or (plan is not None and plan.prune is not None):
        return _inherit_pruned(model, config, calib, plan, progress, costs)
    return _inherit(model, config, calib, plan, progress, costs)


#: a latency plan adds up layer times from the cost table (measured once per shape, cached) and the teacher's
#: rest (its time, measured once, minus its layers'): on a noisy machine the sum can miss what the model
#: measures, either way. The compact student is therefore timed against the teacher, interleaved; outside
#: this window of the budget (a fraction of it) it is planned again at a budget scaled by the miss, at most
#: LATENCY_CHECK_ROUNDS times. Below the window the budget is left unspent; above it, it is not met.
LATENCY_CHECK_WINDOW = (0.9, 1.03)
LATENCY_CHECK_ROUNDS = 2
#: the batches the check times, as rows of the example input (``None``: the example whole): the budget must
#: hold for one request too, where per-operation overhead weighs more than at the calibration batch the plan
#: is priced at (MiniLM at ``latency=0.5``: 0.50 of the teacher at 64 tweets, 0.60 at one); the worst counts
LATENCY_CHECK_ROWS = (None, 1)


def _within_measured_latency(
    model: nn.Module, config: InherConfig, calib: list[Any] | None, student: nn.Module, progress: bool,
    costs: LatencyCosts | None,
) -> nn.Module:
    """``student``, or one planned again at a scaled latency budget until its compact form measures within
    :data:`LATENCY_CHECK_WINDOW` of ``config.latency`` times the teacher's time. Of the students built, the
    one kept is the slowest that is not over the window (the fastest if all are); its plan lists every
    check in ``latency_checks``, the kept one marked. With ``prune="auto"`` the chosen share is kept, only
    the ranks move, unless it pruned alone (every layer dense): then the share is chosen again."""
    example = calib[0] if calib else None
    table = latency_table(model, costs)
    first = student.inhernet_plan
    low, high = (config.latency * edge for edge in LATENCY_CHECK_WINDOW)
    # prune="auto" is not chosen again (only the ranks move), unless it pruned alone: then only another share
    # can move the time
    alone = config.prune == "auto" and first.prune is not None and not first.factorised
    share = None if first.prune is None else "auto" if alone else first.prune.ratio
    checks: list[dict[str, Any]] = []
    built: list[tuple[nn.Module, dict[str, Any]]] = []  # every student measured, with its check
    planned = config.latency
    batches = _check_batches(example)
    for attempt in range(LATENCY_CHECK_ROUNDS + 1):
        candidate = deployed(student, example=example, costs=table)
        by_rows = {}
        for rows, batch in batches.items():
            teacher_s, student_s = table.latency([model, candidate], batch)
            by_rows[rows] = round(float(student_s) / float(teacher_s), 4)
        ratio = max(by_rows.values())
        checks.append({"planned": planned, "measured": ratio, "by_batch": by_rows})
        built.append((student, checks[-1]))
        if low <= ratio <= high or attempt == LATENCY_CHECK_ROUNDS:
            break
        planned = min(1.0, planned * config.latency / ratio)
        try:
            student = _inherit_planned(model, replace(config, latency=planned, prune=share), calib, None,
                                       progress, costs)
        except ValueError as err:  # the scaled budget is out of reach: keep what was built, say so
            checks.append({"planned": planned, "unreachable": str(err)})
            break
    # the slowest student not over the window; if every one is over, the fastest
    within = [pair for pair in built if pair[1]["measured"] <= high]
    student, check = (max(within, key=lambda pair: pair[1]["measured"]) if within
                      else min(built, key=lambda pair: pair[1]["measured"]))
    check["kept"] = True
    if check["measured"] > high:
        _warn_over_latency(config.latency, check, len(built))
    plan = student.inhernet_plan
    plan.latency_checks = checks
    if plan is not first:  # the user's config (and the auto choice's record) describe what was asked
        plan.config = first.config
        if first.prune is not None and plan.prune is not None and plan.prune.ratio == first.prune.ratio:
            plan.prune = replace(first.prune, params=plan.prune.params, latency_ns=plan.prune.latency_ns)
    return student


def _warn_over_latency(budget: float, check: dict[str, Any], plans: int) -> None:
    """Say that the student kept is slower than ``budget`` asks, where, and what else can reach it."""
    rows, ratio = max(check["by_batch"].items(), key=lambda item: item[1])
    times = ", ".join(f"{r} rows: {v:.2f}x" for r, v in check["by_batch"].items())
    one_row = (" At one row the time is mostly per-operation overhead, which cutting ranks or channels does not "
               "remove; fewer operations (whole blocks dropped), onnxruntime, or holding the budget at the example "
               "batch only (inhernet.surgery.LATENCY_CHECK_ROWS = (None,)) can reach it.") if rows == "1" else ""
    warnings.warn(
        f"latency={budget:g}: the fastest of {plans} plans measures {ratio:.2f}x the teacher's time at {rows} rows "
        f"({times}), over the budget.{one_row}",
        stacklevel=4,
    )


def _check_batches(example: Any) -> dict[str, Any]:
    """The inputs the measured check times (:data:`LATENCY_CHECK_ROWS`), keyed by their rows as a string (the
    JSON key of a check's ``by_batch``); one entry when the example has a single row or none to count."""
    total = rows_of(example)
    return {str(total if rows is None else rows): example if rows is None else head_rows(example, rows)
            for rows in LATENCY_CHECK_ROWS if rows is None or (total is not None and rows < total)}


def _inherit(
    model: nn.Module, config: InherConfig, calib: Iterable[Any] | None, plan: Plan | None, progress: bool,
    costs: LatencyCosts | None, latency_base: int | None = None,
) -> nn.Module:
    """``inherit`` without pruning, ``config`` resolved (``latency_base``: see :func:`inhernet.plan.measure`)."""
    example, calib = peek_example(calib)
    candidates, others = find_layers(model, config, example)
    profile = None
    if plan is None:
        profile, calib = measure(model, config, candidates, calib, costs, latency_base)
        check_reachable(config, open_costs(candidates, config, profile), profile)  # before the spectra
    if config.init == "whiten" and config.calibration != "one-pass":
        student = _inherit_sequential(model, config, calib, candidates, others, profile, plan, progress)
        return _checked(student, example, model)
    needs_factors = config.init != "random" or (plan is None and allocation_needs_spectra(config))
    factors = decompose(model, candidates, config, calib, progress=progress) if needs_factors else {}
    if plan is None:
        plan = make_plan(model, config, candidates, others, {n: f.output_energy for n, f in factors.items()}, profile)
    by_name = _planned(plan, candidates)

    student = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for name, rank in plan.ranks().items():
            c = by_name[name]
            block = _build_block(c.module, c.kind, rank, factors.get(name), config, generator)
            student = replace_module(student, name, block)
    student.inhernet_plan = plan
    return _checked(student, example, model)


def _inherit_pruned(
    model: nn.Module, config: InherConfig, calib: Iterable[Any] | None, plan: Plan | None, progress: bool,
    costs: LatencyCosts | None,
) -> nn.Module:
    """``inherit`` on the teacher pruned by ``config.prune`` (or by the ratio of ``plan``), at the same budget;
    with ``prune="auto"`` the share chosen by :func:`inhernet.autoprune.choose`."""
    calib = list(calib) if calib is not None else None  # iterated once per candidate
    example = calib[0] if calib else None
    if plan is not None and plan.prune is not None:  # the plan's structure: the same channels, its ranks
        return _inherit_share(model, config, calib, example, plan.prune.ratio, progress, costs, plan)
    if config.prune != "auto":
        return _inherit_share(model, config, calib, example, float(config.prune), progress, costs)

    def build(chosen: InherConfig, share: float, teacher_ns: int | None, alone: bool) -> nn.Module:
        return _inherit_share(model, chosen, calib, example, share, progress, costs, teacher_ns=teacher_ns,
                              alone=alone)

    return choose(model, config, calib, costs, build)


def _inherit_share(
    model: nn.Module, config: InherConfig, calib: list[Any] | None, example: Any, share: float, progress: bool,
    costs: LatencyCosts | None, plan: Plan | None = None, teacher_ns: int | None = None, alone: bool = False,
) -> nn.Module:
    """The teacher pruned by ``share`` of its channels, then inherited at what is left of the budget (or
    with the ranks of ``plan``, a plan of the same pruning); ``teacher_ns``: the teacher's measured
    time under a latency budget, when known (see :func:`~inhernet.pruning.prune_for`); ``alone``: the
    pruned model may already be under the budget (every layer then stays dense)."""
    pruned, record = prune_for(config, model, example, share, costs, teacher_ns)
    if plan is None:
        inner, inner_plan = inner_config(config, record, alone=alone), None
    else:  # the plan's ranks, no allocation: the budget is not spent again
        inner = unpruned(config)
        inner_plan = replace(plan, config=inner, prune=None, teacher_params=record.params)
    with after_pruning(record), warnings.catch_warnings():
        if alone:  # planned at a budget it meets with room to spare: "more than 2% under" is no news
            warnings.simplefilter("ignore")
        student = _inherit(pruned, inner, calib, inner_plan, progress, costs, record.teacher_latency_ns)
    if alone and config.latency is not None:  # the budget asked, not the room the dense plan was given
        assert record.teacher_latency_ns is not None
        student.inhernet_plan.target_latency_ns = int(config.latency * record.teacher_latency_ns)
    if config.prune is None:  # a pruned plan given with a config of its own: say what was done
        config = replace(config, prune=share)
    student.inhernet_plan = with_prune(student.inhernet_plan, config, record)
    return student


def _inherit_sequential(
    model: nn.Module, config: InherConfig, calib: Iterable[Any] | None, candidates: list[Candidate],
    others: list[Unsupported], profile: Profile | None, plan: Plan | None, progress: bool,
) -> nn.Module:
    """``inherit`` with sequential calibration: ranks from the teacher's spectra, factors block by block."""
    calib = reiterable(calib)
    if plan is None:
        spectra = layer_spectra(model, candidates, config, calib, progress=progress) if (
            allocation_needs_spectra(config)) else {}
        plan = make_plan(model, config, candidates, others, spectra, profile)
    ranks = plan.ranks()
    by_name = _planned(plan, candidates)
    student = copy.deepcopy(model)
    # The student's own modules (a deep copy), so that the compressed ones feed the later stages.
    todo = {name: (student.get_submodule(name), by_name[name].kind) for name in ranks}
    generator = torch.Generator().manual_seed(config.seed)

    def compress(name: str, module: nn.Module, kind: LayerKind, factors: Factors) -> nn.Module:
        return _build_block(module, kind, ranks[name], factors, config, generator)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        teacher = model if config.calibration == "sequential-corrected" else None
        sequential_calibrate(
            student, todo, calib, compress, teacher=teacher, damping=config.damping, progress=progress
        )
    student.inhernet_plan = plan
    return student


def _checked(student: nn.Module, example: Any, teacher: nn.Module) -> nn.Module:
    """``student`` once it ran the example input (the first calib batch), or a clear error if it cannot.

    The weight readers found on the example keep their layers dense, so the inherited model should run
    wherever the teacher did; this one forward pass makes sure that inherit() never hands back a model
    whose own code breaks on an input the teacher accepts. It is cheap next to the calibration that
    came with the same calib (one batch, eval mode, no grad, the RNG untouched) and skipped without one.
    """
    if example is None:
        return student
    try:
        _run_example(student, example)
    except Exception as e:
        try:
            _run_example(teacher, example)
        except Exception:
            return student  # the teacher fails on it too: not an input the model accepts, nothing to check
        raise RuntimeError(
            f"the inherited model fails on the first calib batch, which the teacher runs ({type(e).__name__}: "
            f"{e}); keep the layer the traceback names dense with InherConfig(exclude=[...]) and report this"
        ) from e
    return student


def _run_example(model: nn.Module, example: Any) -> None:
    """One forward pass on ``example`` in eval mode, without grad and with the RNG untouched; modes restored."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()  # no batch-norm statistics updated, no dropout
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            forward_batch(model, move_batch(example, device))
    finally:
        model.train(was_training)


def _planned(plan: Plan, candidates: list[Candidate]) -> dict[str, Candidate]:
    """The candidates by name, checking that the plan factorises only layers this model can."""
    by_name = {c.name: c for c in candidates if c.reason is None}
    unknown = sorted(set(plan.ranks()) - set(by_name))
    if unknown:
        raise ValueError(f"the plan factorises layers this model cannot: {', '.join(unknown)}")
    return by_name


def _build_block(
    module: nn.Module, kind: LayerKind, rank: int, factors: Factors | None, config: InherConfig,
    generator: torch.Generator,
) -> nn.Module:
    """The InherNet block replacing ``module`` at ``rank``: from ``factors``, or random with ``init="random"``."""
    block = kind.build(module, rank, config.experts)
    if config.init == "random":
        _reset_random(block)
    else:
        assert factors is not None, "inherited init needs the layer's factors"
        down, up = factors.truncated(rank)
        block.inherit_(down, up, kind.bias(module), expert_noise=config.expert_noise, generator=generator)
    configure_gates(block, routing=config.routing, gate_pool=config.gate_pool, generator=generator)
    block.source = kind.spec(module)
    block.train(module.training)  # a new module starts in training mode; keep the teacher's
    return block


def _reset_random(block: nn.Module) -> None:
    for module in block.modules():
        if module is not block and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    gate = getattr(block, "gate", None)
    if gate is not None:
        nn.init.zeros_(gate.weight)
        nn.init.zeros_(gate.bias)
