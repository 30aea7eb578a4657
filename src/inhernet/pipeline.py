"""``inherit()`` and ``plan()``: the pipeline, which goes down once.

configure (:mod:`inhernet.config`) -> structure strategies (blocks dropped, :mod:`inhernet.blockdrop`;
channels pruned, :mod:`inhernet.pruning`) -> find, measure, allocate (:mod:`inhernet.allocation`) ->
build (:mod:`inhernet.surgery`). ``prune="auto"`` plans, builds and scores each candidate share
(:mod:`inhernet.autoprune`); a latency budget times the student and plans again when it misses.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from . import blockdrop
from .allocation import Unreachable, make_plan, refuse_unreachable, smallest_reach
from .autoprune import Contest, open_contest
from .batches import by_rows
from .calibration import as_list, peek_example
from .config import InherConfig
from .costs.profile import latency_table, profile_for
from .costs.table import LatencyCosts
from .decomposition import Factors
from .deploy.compact import deployed
from .discovery import find_layers
from .kinds import LayerKind
from .plan import Plan, warn_if_bottlenecked
from .pruning import inner_config, prune_for
from .spectra import measure
from .surgery import assemble, build

__all__ = ["LATENCY_CHECK_ROUNDS", "LATENCY_CHECK_WINDOW", "inherit", "plan"]


def inherit(
    model: nn.Module, config: InherConfig | None = None, calib: Iterable[Any] | None = None, *,
    plan: Plan | None = None, progress: bool = True, costs: LatencyCosts | None = None,
) -> nn.Module:
    """A new model in which every planned layer is an SVD-initialised InherNet block.

    Args:
        model: the teacher; it is not modified.
        config: what to inherit (default ``InherConfig()``: budget 0.25, whitened, energy allocation).
        calib: iterable of model input batches (tensors, ``(inputs, labels)`` tuples or dicts); needed for
            ``init="whiten"`` (a few thousand tokens / a few hundred images are enough), ``macs=``,
            ``latency=`` and ``prune=`` (its first batch, whole, is the example input).
        plan: build an earlier plan (:func:`build`) with ``config``'s init, experts and calibration.
        progress: show a progress bar while calibrating.
        costs: the cost table a latency budget is priced by (default an :class:`inhernet.CostTable` for the
            model's device); the student is then timed (:data:`LATENCY_CHECK_WINDOW`).

    Returns:
        A deep copy of ``model`` with InherNet blocks in place of the planned layers, its plan in
        ``student.inhernet_plan`` (exactly the teacher with ``rank="full"``).
    """
    if plan is not None:  # a plan given decides the structure; it was warned about when it was made
        return build(model, plan, calib, config=(config or plan.config).resolved(model), progress=progress)
    config = (config or InherConfig()).resolved(model)
    _refuse_early(model, config)
    calib = as_list(calib)  # read more than once by every strategy
    if config.target.kind == "latency":
        student = _within_measured_latency(model, config, calib, progress, costs)
    else:
        student = _inherit_once(model, config, calib, progress, costs)
    warn_if_bottlenecked(student.inhernet_plan)
    return student


def plan(
    model: nn.Module, config: InherConfig | None = None, calib: Iterable[Any] | None = None, *,
    costs: LatencyCosts | None = None,
) -> Plan:
    """The per-layer ranks and totals of ``inherit(model, config, calib)``; the model is not modified.
    ``calib`` and ``costs`` as in :func:`inherit`; ``prune="auto"`` is refused (it builds its candidates), and
    so is a MAC or latency budget out of rank cuts' reach (which :func:`inherit` meets by pruning first)."""
    config = (config or InherConfig()).resolved(model)
    if config.prune == "auto":
        raise ValueError(
            "prune='auto' chooses the share of channels by building and scoring each candidate student: "
            "call inherit() (its plan is student.inhernet_plan), or give plan() a share, e.g. prune=0.3"
        )
    _refuse_early(model, config)
    result = _planned(model, config, as_list(calib), costs, keep_factors=False).plan
    warn_if_bottlenecked(result)
    return result


def _refuse_early(model: nn.Module, config: InherConfig) -> None:
    """A parameter budget below the smallest reachable size is refused before a batch is read (it needs no
    data); a MAC or latency budget is, after the example input only (:func:`_planned`)."""
    if config.target.kind == "params" and config.prune is None and not config.drop_blocks:
        refuse_unreachable(config, find_layers(model, config).candidates, None, sum(p.numel() for p in model.parameters()))


@dataclass
class _Planned:
    """What the build reuses: the ``plan``, the ``model`` it factorises (the teacher, or its dropped or pruned
    copy), its factorisable ``layers`` and the one-pass ``factors`` computed."""

    plan: Plan
    model: nn.Module
    layers: dict[str, tuple[nn.Module, LayerKind]]
    factors: dict[str, Factors]


def _planned(
    model: nn.Module, config: InherConfig, calib: list[Any] | None, costs: LatencyCosts | None, *,
    share: float | None = None, teacher_ns: int | None = None, alone: bool = False, keep_factors: bool = True,
    progress: bool = True,
) -> _Planned:
    """Plan ``model`` under ``config``: blocks dropped or channels pruned first (by ``share``, else
    ``config.prune``; ``teacher_ns``, ``alone``: see :func:`inner_config`), then its layers."""
    inner, drop, pruned = config, None, None
    share = share if share is not None else config.prune
    if share is not None and not config.drop_blocks:
        model, pruned = prune_for(config, model, calib[0] if calib else None, float(share), costs, teacher_ns)
        inner = inner_config(config, pruned, alone=alone)  # its errors name the share
    elif config.drop_blocks:
        model, drop = blockdrop.drop_for(config, model, calib)
        inner = replace(config, budget=config.target.of(drop.teacher_params), drop_blocks=0.0)  # the teacher's count
    base = pruned.teacher_latency_ns if pruned is not None else None
    try:
        with warnings.catch_warnings():
            if alone:  # planned at a budget it meets with room to spare: "more than 2% under" is no news
                warnings.simplefilter("ignore")
            example, calib = peek_example(calib)
            candidates, others, layers = find_layers(model, inner, example)
            profile, calib = profile_for(model, inner, layers, calib, costs, base)
            refuse_unreachable(inner, candidates, profile, sum(p.numel() for p in model.parameters()))  # uncalibrated
            spectra, factors = measure(model, layers, inner, calib, keep_factors=keep_factors, progress=progress)
            result = make_plan(model, inner, candidates, others, spectra, profile)
    except ValueError as err:
        if pruned is None or pruned.ratio == 0:
            raise
        raise ValueError(f"after prune={pruned.ratio:g} ({pruned.teacher_params:,} -> {pruned.params:,} parameters): "
                         f"{err}") from err
    record = drop or pruned
    if record is not None:  # the plan of the whole: the user's config, the record, the original teacher's totals
        result.config, result.teacher_params = config, record.teacher_params
        result.drop, result.prune = drop, pruned
    if pruned is not None and alone and config.target.kind == "latency":  # the latency target is the one asked
        assert pruned.teacher_latency_ns is not None
        result.target_latency_ns = config.target.of(pruned.teacher_latency_ns)
    if pruned is not None and result.teacher_macs is not None and pruned.teacher_macs is not None:
        result.teacher_macs = pruned.teacher_macs
    return _Planned(result, model, layers, factors)


def _inherit_once(
    model: nn.Module, config: InherConfig, calib: list[Any] | None, progress: bool, costs: LatencyCosts | None,
    prune_instead: bool = True,
) -> nn.Module:
    """Plan and build once, reusing the plan's one-pass factors (``prune="auto"``: each candidate, the best
    kept); ``prune_instead``: a MAC or latency budget that rank cuts alone cannot reach is met by pruning
    first (:func:`_pruned_instead`)."""
    if config.prune == "auto":
        return _auto(model, config, calib, progress, costs)
    try:
        planned = _planned(model, config, calib, costs, progress=progress)
    except Unreachable as err:
        if not prune_instead or config.prune is not None or config.drop_blocks or config.target.kind == "params":
            raise  # a parameter budget is the user's to trade (budget=, prune=, drop_blocks=: named in err)
        return _pruned_instead(model, config, calib, progress, costs, err)
    return assemble(planned.model, planned.plan, planned.layers, calib, config, factors=planned.factors,
                    progress=progress)


def _pruned_instead(
    model: nn.Module, config: InherConfig, calib: list[Any] | None, progress: bool, costs: LatencyCosts | None,
    err: Unreachable,
) -> nn.Module:
    """A MAC or latency budget that rank cuts alone cannot reach, reached by ``prune="auto"`` (said in one
    line); ``err``, naming every lever, when pruning cannot reach it either."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the contest's own notes: the line below says what was done
            student = _auto(model, replace(config, prune="auto"), calib, progress, costs)
    except ValueError as failed:
        raise err from failed
    record = student.inhernet_plan.prune
    warnings.warn(
        f"{config.target.kind}={config.target.value:g}: rank cuts alone reach {err.least:.1%} of the teacher at "
        f"best, so {record.ratio:.1%} of the channels were pruned first (prune='auto'; pass prune= to choose)",
        stacklevel=4,
    )
    return student


def _auto(
    model: nn.Module, config: InherConfig, calib: list[Any] | None, progress: bool, costs: LatencyCosts | None,
) -> nn.Module:
    """``prune="auto"``: every candidate share planned, built and scored (:class:`~inhernet.autoprune.Contest`)."""
    contest = open_contest(model, config, calib, costs, smallest_reach)
    for share in contest.found.shares:
        _enter(contest, model, share, contest.alone, progress, costs)
    fallback = contest.fallback()
    if fallback is not None:
        _enter(contest, model, fallback, True, progress, costs)
    return contest.winner()


def _enter(
    contest: Contest, model: nn.Module, share: float, alone: bool, progress: bool, costs: LatencyCosts | None,
) -> None:
    """Plan, build and score the candidate of ``share``, its warnings held for the winner alone."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            planned = _planned(model, contest.config, contest.calib, costs, share=share, teacher_ns=contest.teacher_ns,
                               alone=alone, progress=progress)
        except ValueError as err:  # measured again, this share missed the budget after all
            contest.missed(share, err)
            return
        student = assemble(planned.model, planned.plan, planned.layers, contest.calib, factors=planned.factors,
                           progress=progress)
    contest.scored(share, student, caught)


#: a latency plan's sum of cost-table prices can miss what the model measures: the compact student is timed
#: against the teacher and, outside this window of the budget, planned again at a budget scaled by the miss,
#: at most LATENCY_CHECK_ROUNDS times
LATENCY_CHECK_WINDOW = (0.9, 1.03)
LATENCY_CHECK_ROUNDS = 2


def _within_measured_latency(
    model: nn.Module, config: InherConfig, calib: list[Any] | None, progress: bool, costs: LatencyCosts | None,
) -> nn.Module:
    """The student, planned again at a scaled latency budget until its compact form measures within
    :data:`LATENCY_CHECK_WINDOW` of the budget; the one kept: :func:`_kept`."""
    student = _inherit_once(model, config, calib, progress, costs)
    example = calib[0] if calib else None
    table = latency_table(model, costs)
    first = student.inhernet_plan
    budget = config.target.value
    assert isinstance(budget, float)
    low, high = (budget * edge for edge in LATENCY_CHECK_WINDOW)
    # prune="auto" is not chosen again (only the ranks move), unless it pruned alone: then only another share
    # can move the time
    alone = config.prune == "auto" and first.prune is not None and not first.factorised
    share = None if first.prune is None else "auto" if alone else first.prune.ratio
    checks: list[dict[str, Any]] = []
    built: list[tuple[nn.Module, dict[str, Any]]] = []  # every student measured, with its check
    planned = budget
    batches = by_rows(example, config.latency_rows)
    for attempt in range(LATENCY_CHECK_ROUNDS + 1):
        candidate = deployed(student, example=example, costs=table)
        ratios = {rows: _ratio(*table.latency([model, candidate], batch)) for rows, batch in batches.items()}
        checks.append({"planned": planned, "measured": max(ratios.values()), "by_batch": ratios})
        built.append((student, checks[-1]))
        if low <= checks[-1]["measured"] <= high or attempt == LATENCY_CHECK_ROUNDS:
            break
        planned = min(1.0, planned * budget / checks[-1]["measured"])
        try:
            student = _inherit_once(model, replace(config, latency=planned, prune=share), calib, progress, costs,
                                    prune_instead=False)  # only the ranks move
        except ValueError as err:  # the scaled budget is out of reach: keep what was built, say so
            checks.append({"planned": planned, "unreachable": str(err)})
            break
    return _kept(built, checks, first, budget, high)


def _ratio(teacher_s: float, student_s: float) -> float:
    return round(float(student_s) / float(teacher_s), 4)


def _kept(
    built: list[tuple[nn.Module, dict[str, Any]]], checks: list[dict[str, Any]], first: Plan, budget: float,
    high: float,
) -> nn.Module:
    """The slowest student not over the window (else the fastest, with a warning), its plan holding every
    check and the user's config."""
    within = [pair for pair in built if pair[1]["measured"] <= high]
    student, check = (max(within, key=lambda pair: pair[1]["measured"]) if within
                      else min(built, key=lambda pair: pair[1]["measured"]))
    check["kept"] = True
    if check["measured"] > high:
        _warn_over_latency(budget, check, len(built))
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
               "batch only (InherConfig(latency_rows=None)) can reach it.") if rows == "1" else ""
    warnings.warn(
        f"latency={budget:g}: the fastest of {plans} plans measures {ratio:.2f}x the teacher's time at {rows} rows "
        f"({times}), over the budget.{one_row}",
        stacklevel=4,
    )
