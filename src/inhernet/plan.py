"""The :class:`Plan`: which layers are factorised at which rank, and what the model will weigh.

Made by the allocation (:func:`inhernet.allocation.make_plan`), read by the build
(:mod:`inhernet.surgery`), recorded by :func:`inhernet.save`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from .blockdrop import DropRecord
from .config import InherConfig
from .pruning import PruneRecord

__all__ = ["BUDGET_TOLERANCE", "LayerPlan", "Plan", "warn_if_bottlenecked"]

FACTORISED = "factorised"
#: a plan under a budget (parameters, MACs or measured time) lands at or below it and within 2% of it
BUDGET_TOLERANCE = 0.98


@dataclass
class LayerPlan:
    """One row of the plan: a module that owns parameters, and what happens to it."""

    name: str
    kind: str
    shape: str
    rank: int | None
    max_rank: int | None
    experts: int
    params_before: int
    params_after: int
    reason: str

    @property
    def factorised(self) -> bool:
        return self.rank is not None


@dataclass
class Plan:
    """The per-layer table and totals of an inheritance; ``str(plan)`` prints it.

    The MAC fields (under ``macs=``) count one forward pass on the example input
    (:func:`inhernet.count_macs`); the latency fields (under ``latency=``, in ns) are the teacher's
    measured time, the target and the cost table's prediction. ``prune`` and ``drop`` record a pruning
    (:class:`inhernet.pruning.PruneRecord`) or blocks dropped (:class:`inhernet.DropRecord`): the layers
    are then the changed model's, the ``teacher_*`` totals the original teacher's, which the budget and
    :attr:`ratio` refer to.
    """

    config: InherConfig
    teacher_params: int
    target_params: int | None
    layers: list[LayerPlan] = field(default_factory=list)
    teacher_macs: int | None = None
    target_macs: int | None = None
    total_macs: int | None = None
    teacher_latency_ns: int | None = None
    target_latency_ns: int | None = None
    total_latency_ns: int | None = None
    prune: PruneRecord | None = None
    #: under a latency budget, each timing of the compact student against the teacher: ``{"planned",
    #: "measured" (the worst of "by_batch")}``, the one kept marked ``"kept": True``
    #: (:data:`inhernet.pipeline.LATENCY_CHECK_WINDOW`)
    latency_checks: list[dict[str, Any]] | None = None
    drop: DropRecord | None = None

    @property
    def total_params(self) -> int:
        """Parameters of the inherited model, everything included."""
        start = next((r.params for r in (self.prune, self.drop) if r is not None), self.teacher_params)
        return start - sum(r.params_before - r.params_after for r in self.layers)

    @property
    def ratio(self) -> float:
        return self.total_params / self.teacher_params

    @property
    def in_window(self) -> bool:
        """Whether a budgeted plan lands within 2% under its target (``True`` without one)."""
        for total, target in ((self.total_latency_ns, self.target_latency_ns), (self.total_macs, self.target_macs),
                              (self.total_params, self.target_params)):
            if target is not None and total is not None:
                return total >= BUDGET_TOLERANCE * target
        return True

    @property
    def factorised(self) -> list[LayerPlan]:
        return [r for r in self.layers if r.factorised]

    def ranks(self) -> dict[str, int]:
        return {r.name: r.rank for r in self.layers if r.rank is not None}

    def to_dict(self) -> dict[str, Any]:
        totals = [f"{who}_{what}" for what in ("params", "macs", "latency_ns") for who in ("teacher", "target", "total")]
        return {
            "config": self.config.to_dict(),
            **{key: getattr(self, key) for key in totals},
            "layers": [asdict(r) for r in self.layers],
            **({"prune": self.prune.to_dict()} if self.prune is not None else {}),
            **({"drop": self.drop.to_dict()} if self.drop is not None else {}),
            **({"latency_checks": self.latency_checks} if self.latency_checks is not None else {}),
        }

    def to_markdown(self) -> str:
        head = "| layer | kind | shape | rank | params before | params after | note |\n|---|---|---|---:|---:|---:|---|"
        rows = [
            f"| {r.name or '(root)'} | {r.kind} | {r.shape} | "
            f"{'' if r.rank is None else f'{r.rank}/{r.max_rank}'} | {r.params_before:,} | "
            f"{r.params_after:,} | {r.reason} |"
            for r in self.layers
        ]
        return "\n".join([head, *rows, "", self.summary()])

    def summary(self) -> str:
        target = f", target {self.target_params:,}" if self.target_params is not None else ""
        text = "".join(f"{r.summary()}; then " for r in (self.prune, self.drop) if r is not None)
        text += (
            f"{len(self.factorised)} of {len(self.layers)} layers factorised, experts={self.config.experts}, "
            f"init={self.config.init}: {self.teacher_params:,} -> {self.total_params:,} parameters "
            f"({self.ratio:.1%}{target})"
        )
        if self.teacher_macs is not None and self.total_macs is not None:
            share = self.total_macs / self.teacher_macs if self.teacher_macs else 1.0
            target = f", target {self.target_macs:,}" if self.target_macs is not None else ""
            text += f"; {self.teacher_macs:,} -> {self.total_macs:,} MACs ({share:.1%}{target})"
        if self.teacher_latency_ns is not None and self.total_latency_ns is not None:
            share = self.total_latency_ns / self.teacher_latency_ns if self.teacher_latency_ns else 1.0
            target = f", target {_ms(self.target_latency_ns)}" if self.target_latency_ns is not None else ""
            text += (
                f"; latency {_ms(self.teacher_latency_ns)} measured -> {_ms(self.total_latency_ns)} predicted "
                f"by the cost table on the example input ({share:.1%}{target})"
            )
        kept = next((c for c in self.latency_checks or [] if c.get("kept")), None)
        if kept is not None:
            text += f"; the compact model measured {kept['measured']:.1%} of the teacher's time"
            if len(kept.get("by_batch", {})) > 1:
                text += " (the worst of " + ", ".join(
                    f"{r:.1%} at {rows} rows" for rows, r in kept["by_batch"].items()) + ")"
            if kept is not self.latency_checks[0]:
                text += (f" (planned at {kept['planned']:.1%}: the first plan measured "
                         f"{self.latency_checks[0]['measured']:.1%})")
        return text

    def __str__(self) -> str:
        return self.to_markdown()


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


#: a budgeted plan that cuts a layer of at least BOTTLENECK_WIDTH ranks to BOTTLENECK_RANK or less is warned
#: about (KD trains through it poorly: BENCHMARKS.md, "fashion-effnet at budget 0.1")
BOTTLENECK_RANK = 2
BOTTLENECK_WIDTH = 32


def warn_if_bottlenecked(result: Plan) -> None:
    """Warn when a budget drove layers to a rank KD trains through poorly, and suggest pruning first."""
    if result.prune is not None or not result.config.target.budgeted:
        return
    narrow = [r for r in result.layers if r.factorised and r.rank <= BOTTLENECK_RANK
              and (r.max_rank or 0) >= BOTTLENECK_WIDTH]
    if not narrow:
        return
    worst = min(narrow, key=lambda r: r.rank / (r.max_rank or 1))
    warnings.warn(
        f"the budget cuts {len(narrow)} layer(s) to rank <= {BOTTLENECK_RANK} (e.g. {worst.name}: rank {worst.rank} "
        f"of {worst.max_rank}): a bottleneck that KD trains through poorly. InherConfig(prune='auto') removes "
        "channels first where the rank cut alone would go this far; or raise the budget",
        stacklevel=3,
    )
