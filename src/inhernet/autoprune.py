"""``InherConfig(prune="auto")``: which shares of channels to try, and which candidate student wins.

The rule is docs/design.md's ("Pruning first"): the candidates spread between ``p_min``, the smallest share
whose smallest ranks reach the budget, and ``p_max``, the largest whose pruned model is still over it.
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .batches import device_of, forward_batch, logits_of, move_batch, rows_of, split_rows
from .config import DEFAULT_PROBE_STEPS, InherConfig
from .costs.profile import latency_table, measured_ns
from .costs.table import LatencyCosts
from .distillation.loss import kd_loss
from .pruning import (
    budget_standing,
    inner_config,
    prune_for,
    require_example,
    teacher_outputs,
    zero_shot_loss,
)

__all__ = [
    "CEILING", "PROBE_BATCH", "PROBE_LR", "PROBE_TEMPERATURE", "RESOLUTION", "SCAN", "SPREAD", "Candidates", "Contest",
    "Reach", "Standing", "candidate_shares", "open_contest", "probe_loss", "score", "split_probe", "standing",
]

#: where the candidates lie between ``p_min`` (0) and ``p_max`` (1)
SPREAD = (0.0, 0.25, 0.5, 0.75, 0.9, 0.97)
#: the bisections stop when the bracket's ends are known to this share of the channels
RESOLUTION = 0.01
#: the step of the scan that brackets ``p_max`` before its bisection
SCAN = 0.1
#: the largest share tried (near its 95% cap Torch-Pruning's pruned size is no longer monotone)
CEILING = 0.9
#: the probe's Adam learning rate (it ranks candidates, it does not tune them)
PROBE_LR = 1e-3
#: the probe's KD temperature (:class:`inhernet.distillation.DistillConfig`'s default)
PROBE_TEMPERATURE = 4.0
#: the probe's batch size: calibration batches are cut into batches of at most this many examples
PROBE_BATCH = 64


#: :func:`inhernet.allocation.smallest_reach`, handed down by the pipeline: ``reach(model, config, example,
#: costs, latency_base, params)`` is ``(target, smallest, unit)`` of ``model``'s smallest ranks
Reach = Callable[
    [nn.Module, InherConfig, Any, "LatencyCosts | None", "int | None", int], tuple[int, int, str]
]


@dataclass(frozen=True)
class Candidates:
    """What :func:`candidate_shares` found: the ``shares``, their ``bracket``, why the shares just outside it
    are none (``skipped``) and, when the one share prunes alone (every layer dense), why (``alone``)."""

    shares: list[float]
    bracket: list[float]
    skipped: dict[str, str]
    alone: str | None = None
    #: the smallest share under the budget by pruning alone (``None``: none up to :data:`CEILING`)
    under: float | None = None


@dataclass(frozen=True)
class Standing:
    """The teacher pruned by ``share`` against the budget: ``have`` (dense), ``target`` and ``smallest``
    (every layer at its floor rank; ``None`` when not priced)."""

    share: float
    have: int
    target: int
    unit: str
    smallest: int | None = None

    @property
    def over(self) -> bool:
        """Ranks are left to cut (as :func:`inner_config` asks)."""
        return self.have >= self.target

    @property
    def reachable(self) -> bool:
        return self.over and self.smallest is not None and self.smallest <= self.target

    def why_not(self) -> str:
        """Why this share is no candidate, for the record's ``skipped``."""
        if not self.over:
            budget = {"ns": "latency budget", "MACs": "MAC budget"}.get(self.unit, "budget")
            return (f"pruned alone to {self.have:,} {self.unit}, already under the {budget} of {self.target:,}: "
                    "nothing is left to factorise")
        pruned = f"after pruning {self.share:g}" if self.share else "without pruning"
        return (f"unreachable: {pruned} the smallest ranks reach {self.smallest:,} {self.unit}, over the "
                f"budget of {self.target:,}")


def standing(
    config: InherConfig, model: nn.Module, example: Any, share: float, costs: LatencyCosts | None,
    teacher_ns: int | None, smallest: bool, reach: Reach,
) -> Standing:
    """Where ``share`` stands; ``smallest``: also price the pruned model's smallest ranks by ``reach``."""
    pruned, record = prune_for(config, model, example, share, costs, teacher_ns)
    have, target, unit = budget_standing(config, record)
    if not smallest or have < target:
        return Standing(share, have, target, unit)
    inner = inner_config(config, record)
    target, least, unit = reach(pruned, inner, example, costs, record.teacher_latency_ns, record.params)
    return Standing(share, have, target, unit, least)


def candidate_shares(stand: Callable[[float, bool], Standing]) -> Candidates:
    """The shares ``prune="auto"`` builds, spread over ``[p_min, p_max]``, or the one share that reaches
    the budget by pruning alone. ``stand(share, smallest)``: :func:`standing` of ``share``. Both ends are
    found by bisection to :data:`RESOLUTION` (``p_max`` after a scan, :func:`_p_max`).

    Raises:
        ValueError: no share reaches the budget, with rank cuts or by pruning alone.
    """
    zero = stand(0.0, True)  # the teacher: always over the budget (a budget is at most the teacher)
    p_max, under = _p_max(stand, zero)
    skipped = {} if under is None else {_key(under.share): under.why_not()}
    # to 0.001 as every share recorded, on the side under the budget
    alone_share = None if under is None else math.ceil(under.share * 1000) / 1000
    p_min = 0.0
    if not zero.reachable:
        edge = stand(p_max, True)
        # timing noise can put the scan's share under the budget now: step back until it is over
        while not edge.over and p_max > 0:
            p_max = max(0.0, round(p_max - RESOLUTION, 6))
            edge = stand(p_max, True)
        skipped["0"] = zero.why_not()
        if not edge.reachable:
            return _alone(zero, edge, alone_share)
        p_min = _bisect(stand, 0.0, p_max, lambda there: there.reachable, smallest=True)[1]
    # the ends rounded inwards to 0.001, so that the candidates keep their sides of the budget
    p_min, p_max = math.ceil(p_min * 1000) / 1000, math.floor(p_max * 1000) / 1000
    p_max = max(p_min, p_max)
    shares = sorted({min(p_max, max(p_min, round(p_min + t * (p_max - p_min), 3))) for t in SPREAD})
    return Candidates(shares, [p_min, p_max], skipped, under=alone_share)


def _p_max(stand: Callable[[float, bool], Standing], zero: Standing) -> tuple[float, Standing | None]:
    """The largest share still over the budget, and the standing of the smallest under it (``None``: none
    up to :data:`CEILING`): a scan in steps of :data:`SCAN`, then a bisection. A scan, not a bisection
    from the top, since a larger share can leave a larger model near Torch-Pruning's cap."""
    lo, last = 0.0, zero
    for k in range(1, round(CEILING / SCAN) + 1):
        there = stand(round(k * SCAN, 6), False)
        if there.have > last.have and there.unit != "ns":
            # pruning more left a larger model: not trusted from here (measured time is never monotone)
            return lo, None
        if not there.over:
            lo, hi = _bisect(stand, lo, there.share, lambda t: not t.over, smallest=False)
            return lo, stand(hi, False)
        lo, last = there.share, there
    return lo, None


def _bisect(
    stand: Callable[[float, bool], Standing], lo: float, hi: float, holds: Callable[[Standing], bool],
    smallest: bool,
) -> tuple[float, float]:
    """``(lo, hi)`` narrowed to :data:`RESOLUTION` around where ``holds`` starts to hold."""
    while hi - lo > RESOLUTION:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if holds(stand(mid, smallest)) else (mid, hi)
    return lo, hi


def _alone(zero: Standing, edge: Standing, alone_share: float | None) -> Candidates:
    """The smallest share under the budget by pruning alone, every layer dense, as the one candidate."""
    why = (f"after pruning {edge.share:g} of the channels, the most that leaves ranks to cut, the smallest ranks "
           f"reach {edge.smallest:,} {edge.unit} at best (without pruning: {zero.smallest:,})")
    if alone_share is None:
        raise ValueError(
            f"the budget of {zero.target:,} {zero.unit} is reached by no share of prune='auto': {why}, and "
            f"pruning alone does not reach it either (no larger share was tried: at most {CEILING:g}, while "
            "pruning more removes more); raise the budget, lower min_rank_ratio or factorise more layers"
        )
    skipped = {"0": zero.why_not(), _key(edge.share): f"rank cuts cannot reach the budget: {why}"}
    return Candidates([alone_share], [alone_share, alone_share], skipped, alone=why, under=alone_share)


def split_probe(calib: Sequence[Any], steps: int) -> tuple[list[Any], list[Any]]:
    """The batches the probe trains on and those it scores on (the last quarter); ``steps=0``: all scored.

    Raises:
        ValueError: ``steps > 0`` with fewer than 2 batches.
    """
    if steps == 0:
        return [], list(calib)
    if len(calib) < 2:
        raise ValueError(
            f"prune_probe_steps={steps} needs at least 2 calibration batches (KD steps on the first, the score on "
            f"the held-out last), got {len(calib)}; pass more calib batches or prune_probe_steps=0 (zero-shot)"
        )
    held = max(1, len(calib) // 4)
    return list(calib[:-held]), list(calib[-held:])


def probe_loss(
    student: nn.Module, train: Sequence[Any], train_targets: Sequence[torch.Tensor], held: Sequence[Any],
    held_targets: Sequence[torch.Tensor], steps: int, seed: int,
) -> float:
    """``student``'s KL to the teacher on ``held`` after ``steps`` KD steps on ``train`` (batches of
    :data:`PROBE_BATCH`, :func:`~inhernet.distillation.kd_loss`'s KL at :data:`PROBE_TEMPERATURE`, Adam
    at :data:`PROBE_LR`, seeded by ``seed``), on a copy: ``student`` is left as it was."""
    if steps == 0:
        return zero_shot_loss(student, held, held_targets)
    device = device_of(student)
    inputs = [part for batch in train for part in split_rows(batch, PROBE_BATCH)]
    wanted = [part for target in train_targets for part in split_rows(target, PROBE_BATCH)]
    if len(inputs) != len(wanted):
        raise ValueError(f"the probe's {len(train)} calibration batches and the teacher's logits on them differ in size")
    probe = copy.deepcopy(student)  # trained in place of the student, which stays exactly as it was
    params = [p for p in probe.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=PROBE_LR)
    probe.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
        torch.manual_seed(seed)
        for step in range(steps):
            i = step % len(inputs)
            logits = logits_of(forward_batch(probe, move_batch(inputs[i], device)))
            loss = kd_loss(logits, wanted[i].to(device, logits.dtype), temperature=PROBE_TEMPERATURE, alpha=1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return zero_shot_loss(probe, held, held_targets)


def score(
    student: nn.Module, config: InherConfig, calib: Sequence[Any], targets: Sequence[torch.Tensor],
) -> float:
    """:func:`probe_loss` on the :func:`split_probe` of ``calib`` (``targets``: the teacher's logits)."""
    steps = config.prune_probe_steps
    assert steps is not None
    train, held = split_probe(calib, steps)
    return probe_loss(student, train, targets[:len(train)], held, targets[len(train):], steps, config.seed)


@dataclass
class Contest:
    """The candidates of ``prune="auto"``, scored as the pipeline builds them; the lowest score wins."""

    config: InherConfig  #: the user's, ``prune_probe_steps`` resolved
    calib: list[Any]
    found: Candidates
    teacher_ns: int | None  #: the teacher's measured time under a latency budget (every candidate's target)
    probe: list[Any]  #: the batches the probe trains and scores on: ``calib``, or its one batch split by rows
    targets: list[torch.Tensor]  #: the teacher's logits on ``probe``
    scores: dict[str, float | None] = field(default_factory=dict)
    best: tuple[tuple[bool, float], nn.Module, list[warnings.WarningMessage]] | None = None
    failures: list[ValueError] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.skipped = dict(self.found.skipped)
        self.bracket = list(self.found.bracket)
        self.scores = dict.fromkeys(self.skipped)

    @property
    def alone(self) -> bool:
        """The candidates prune alone (every layer dense): no share leaves ranks that reach the budget."""
        return self.found.alone is not None

    def missed(self, share: float, err: ValueError) -> None:
        """``share``, measured again when built, missed the budget after all."""
        self.scores[_key(share)], self.skipped[_key(share)] = None, str(err)
        self.failures.append(err)

    def scored(self, share: float, student: nn.Module, caught: list[warnings.WarningMessage]) -> None:
        """Score the candidate ``student`` of ``share`` (built with the warnings ``caught``) and keep the best."""
        value = score(student, self.config, self.probe, self.targets)
        self.scores[_key(share)] = value
        key = (not student.inhernet_plan.in_window, value)
        if self.best is None or key < self.best[0]:
            self.best = (key, student, caught)

    def fallback(self) -> float | None:
        """The pruning-alone share to build when every candidate missed the budget; else ``None``."""
        under = self.found.under
        if self.best is not None or self.alone or under is None:
            return None
        _warn_alone(f"no candidate share ({', '.join(map(_key, self.found.shares))}) met the budget when built", under)
        self.bracket = [under, under]
        return under

    def winner(self) -> nn.Module:
        """The winning student, its ``prune`` record holding every score; only its warnings are raised again.

        Raises:
            ValueError: no candidate met the budget when built.
        """
        if self.best is None:
            raise ValueError(
                f"prune='auto': no candidate share ({', '.join(map(_key, self.found.shares))}, between "
                f"{self.bracket[0]:g} and {self.bracket[1]:g}) met the budget when built: "
                + "; ".join(f"{share}: {why}" for share, why in self.skipped.items())
            ) from self.failures[0]
        _, student, caught = self.best
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        record = student.inhernet_plan.prune
        record.scores, record.skipped = _by_share(self.scores), _by_share(self.skipped)
        record.bracket, record.probe_steps = self.bracket, self.config.prune_probe_steps
        return student


def open_contest(
    model: nn.Module, config: InherConfig, calib: list[Any] | None, costs: LatencyCosts | None, reach: Reach,
) -> Contest:
    """The contest of ``prune="auto"``: the shares of :func:`candidate_shares` (bracketed by ``reach``), the
    teacher's logits and (under a latency budget) its time, measured once."""
    example = calib[0] if calib else None
    require_example(example)
    assert calib is not None
    if config.prune_probe_steps is None:
        config = replace(config, prune_probe_steps=DEFAULT_PROBE_STEPS)
    probe = calib
    if len(calib) == 1 and config.prune_probe_steps:  # the probe trains on one part and scores on the other
        probe = split_rows(calib[0], -(-(rows_of(calib[0]) or 1) // 2))
    split_probe(probe, config.prune_probe_steps or 0)  # too few batches for the probe: said before anything is built
    latency = config.target.kind == "latency"
    teacher_ns = measured_ns(latency_table(model, costs), model, example) if latency else None

    @functools.cache  # each share is pruned (and timed) once
    def stand(share: float, smallest: bool) -> Standing:
        return standing(config, model, example, share, costs, teacher_ns, smallest, reach)

    found = candidate_shares(stand)
    if found.alone is not None:
        _warn_alone(found.alone, found.shares[0])
    return Contest(config, calib, found, teacher_ns, probe, teacher_outputs(model, probe))


def _warn_alone(why: str, share: float) -> None:
    warnings.warn(
        f"prune='auto': no share of the channels leaves a model that rank cuts bring under the budget ({why}); "
        f"pruning {_key(share)} of them alone reaches it, every layer left dense (the prune-kd student)",
        stacklevel=5,
    )


def _by_share(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` (keyed by :func:`_key`) in the order of the shares."""
    return dict(sorted(d.items(), key=lambda kv: float(kv[0])))


def _key(share: float) -> str:
    """A share as the record's key: at most 3 decimals (``0.45``, ``0.612``)."""
    return f"{round(share, 3):g}"
