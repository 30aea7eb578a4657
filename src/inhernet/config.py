"""``InherConfig``: what to inherit, at which size, and how to initialise it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from torch import nn

from .families import FAMILIES, FAMILY_DEFAULTS, model_family
from .stack import layer_stack

__all__ = ["DEFAULT_BUDGET", "DEFAULT_PROBE_STEPS", "InherConfig", "Target", "plain_number"]

DEFAULT_BUDGET = 0.25
#: KD steps each ``prune="auto"`` candidate gets before it is scored (``InherConfig(prune_probe_steps=None)``)
DEFAULT_PROBE_STEPS = 50
INITS = ("whiten", "svd", "random")
#: the allocations that rank moves by (weighted) energy (see :func:`inhernet.allocation.energy_weights`)
ENERGY_STRATEGIES = ("energy", "loss", "loss-by-type")
ALLOCATIONS = (*ENERGY_STRATEGIES, "uniform")
CALIBRATIONS = ("one-pass", "sequential", "sequential-corrected")
ROUTINGS = ("soft", "top1")  # = inhernet.layers.ROUTINGS (config stays import-free)
GATE_POOLS = ("mean", "position")  # = inhernet.layers.GATE_POOLS
# The mutually exclusive ways of choosing ranks.
RANK_CHOICES = ("budget", "rank", "energy", "macs", "latency")
# Seeds as torch, numpy and Lightning all accept them.
MAX_SEED = 2**32 - 1
#: the kind of each ranks choice: what the student is cut to
TARGET_KINDS = {"budget": "params", "rank": "rank", "energy": "energy", "macs": "macs", "latency": "latency"}


@dataclass(frozen=True)
class Target:
    """What the student is cut to, as one tagged value: ``kind`` is ``"params"``, ``"macs"`` or
    ``"latency"`` (a budget: a fraction of the teacher, or an absolute count) or ``"rank"`` / ``"energy"``
    (a rule per layer); ``value`` is the number (or ``"full"``) the config was given."""

    kind: Literal["params", "macs", "latency", "rank", "energy"]
    value: float | int | str

    @property
    def budgeted(self) -> bool:
        """A budget over the whole model (parameters, MACs or measured time), not a rule per layer."""
        return self.kind in ("params", "macs", "latency")

    def of(self, whole: int) -> int:
        """The budget as an absolute count of ``whole`` (the teacher's parameters, MACs or ns)."""
        assert self.budgeted and not isinstance(self.value, str)
        return int(self.value * whole) if isinstance(self.value, float) else int(self.value)


@dataclass
class InherConfig:
    """Configuration of the inheritance surgery.

    Exactly one way of choosing ranks is used (``budget``, ``rank``, ``energy``, ``macs`` or
    ``latency``); when none is given, ``budget=0.25``.

    Args:
        budget: the inherited model's total parameter count, as a fraction in (0, 1] of the teacher's
            (a ``float``) or an absolute count (an ``int`` > 1). Everything counts, dense layers included.
        rank: a fixed rank for every factorised layer instead of a budget: an ``int`` >= 1, a ``float``
            in (0, 1] (a fraction of each layer's full rank), or ``"full"`` — every supported layer is
            factorised at full rank even where that saves nothing, and the inherited model reproduces
            the teacher (a verification mode).
        energy: instead of a budget, keep in every layer the smallest rank that retains this fraction of
            the layer's spectral energy (whitened energy with ``init="whiten"``).
        macs: a budget in multiply-accumulates instead of parameters: the inherited model's MACs in one
            forward pass on an example input, as a fraction in (0, 1] of the teacher's (a ``float``) or
            an absolute count (an ``int`` >= 1). The example input is the first batch of ``calib`` (so
            ``calib`` is required), taken whole: an absolute count refers to that batch, at its batch
            size and sequence length. MACs are those of :func:`inhernet.count_macs` (PyTorch's
            FLOP counter: embedding lookups and element-wise ops count 0, so an embedding never saves
            MACs and stays dense). Ranks go where they keep the most energy per MAC: a conv on a large
            feature map pays more per rank than one on a small map.
        latency: a budget in measured time instead of parameters: the compact model's latency
            (:func:`inhernet.deploy.compact`: experts folded, single-expert blocks) as a fraction in
            (0, 1] of the teacher's, for one forward pass on the example input (the first batch of
            ``calib``, whole, so ``calib`` is required), on the current device and thread count. Each
            factorisable layer is priced in nanoseconds from a cost table
            (:class:`inhernet.CostTable`, or the ``costs=`` given to :func:`inhernet.plan` /
            :func:`inhernet.inherit`): its dense time, and ``base + unit * rank`` fitted to the
            table's timed ranks; the rest of the model is the teacher's measured time minus those
            dense times (never negative). A layer whose factorised form is no faster than the dense
            one at any allowed rank stays dense. Measurements vary between runs and machines: the
            plan reports what it measured (``teacher_latency_ns``, ``target_latency_ns``,
            ``total_latency_ns``).
        latency_rows: under ``latency=``, the budget must also hold at a batch of this many rows (the
            example's first rows; default 1: one request, where per-operation overhead weighs more);
            ``None``: at the example batch only.
        experts: number of gated experts ``h`` on the up-projection side (1 = plain low-rank, no gate).
            ``None`` (the default): the best recipe we know for the model's family, resolved at plan
            time (see :mod:`inhernet.families`; 1 for every family so far). ``InherConfig.paper()``
            gives the method as published (h = 3).
        init: ``"whiten"`` (data-aware SVD of ``W @ chol(XX^T/N)``; needs calibration batches),
            ``"svd"`` (plain truncated SVD), or ``"random"`` (same structure, random weights: the
            ablation that isolates the value of inheritance).
        allocation: ``"energy"`` (global greedy over singular values by retained energy per parameter,
            or per MAC with ``macs=``, each layer's energy counted as a fraction of its own total),
            ``"loss"`` (the same greedy on absolute energies: with ``init="whiten"`` each singular
            value is worth its truncation loss, the mean squared output error per calibration token
            that dropping it adds, ``||W X - W' X||^2 / N`` as SVD-LLM shows, compared across all
            layers), ``"loss-by-type"`` (absolute losses normalised by the mean total of the layer's
            matrix type, e.g. every block's ``q_proj``: losses compete within a type, whose outputs
            live in the same space, and each type's typical layer weighs the same, as SVD-LLM V2
            normalises within groups of one matrix type) or ``"uniform"`` (one rank ratio for every
            factorised layer, found by bisection). Every strategy keeps the rank floor
            (``min_rank``, ``min_rank_ratio``).
        include: ``fnmatch`` patterns of module names to consider (empty = all).
        exclude: patterns of module names to keep dense. A pattern also matches a name's descendants,
            so ``"classifier"`` excludes ``classifier`` and ``classifier.*``.
        min_rank: the smallest rank a factorised layer may get.
        min_rank_ratio: a floor on every factorised layer's rank as a fraction in [0, 1) of its full
            rank (on top of ``min_rank``). Energy allocation can otherwise starve a layer down to rank
            1 when its spectrum looks cheap to cut, and such a layer breaks the function it feeds; a
            layer whose floor would not save parameters stays dense. ``None`` (the default): the
            family's (0.25 for causal LMs, else 0).
        calibration: how ``init="whiten"`` gathers its input statistics. ``"one-pass"``: one forward
            pass of the teacher with hooks on every layer (every layer's statistics are the
            teacher's, all held at once). ``"sequential"``: block by block along the model's stack of
            repeated blocks (``encoder.layer``, ``model.layers``...), each block calibrated on inputs
            that already passed the compressed earlier blocks, holding one block's statistics at a
            time (see :mod:`inhernet.sequential`); ranks are still allocated from the teacher's spectra.
            ``"sequential-corrected"``: sequential, and each block layer aims at the teacher's outputs
            (a least-squares correction of the error let through by the earlier blocks). It fits ``m x n``
            numbers per layer from the calibration tokens: it needs many more tokens than the layer is
            wide, and on SmolLM2 with 4k tokens it overfits (see BENCHMARKS.md); prefer ``"sequential"``.
            ``None`` (the default): the family's (``"sequential"`` for causal LMs, else ``"one-pass"``).
        family: whose defaults fill the ``None`` fields above: ``"conv"``, ``"encoder"``,
            ``"causal-lm"`` or ``"other"``; ``None``: detected from the model at plan time
            (:func:`inhernet.families.model_family`). The plan's config holds the resolved values.
        expert_noise: Frobenius norm of each expert's zero-sum deviation, as a fraction of
            ``||U_r S_r||``. Breaks the experts' symmetry; the init stays exactly function preserving.
        routing: how a gated block (``experts > 1``) combines its experts: ``"soft"`` (the paper, a
            softmax-weighted sum) or ``"top1"`` (each token / sample uses the expert of its largest
            gate logit, a straight-through gate-scaled choice; the experts start equal and a random
            gate breaks their symmetry, so the init stays exactly function preserving). See
            :func:`inhernet.layers.configure_gates`. Parameter counts are those of ``"soft"``; a
            ``macs=`` budget still prices the fused product of all h experts (this implementation
            runs it, with zeros for the unchosen experts). Experimental: on mnist-cnn neither variant beat
            ``experts=1`` (BENCHMARKS.md, "Experts that pay").
        gate_pool: what a conv block's gate reads: ``"mean"`` (the spatial mean of its rank-r
            features: one gate per sample, the paper) or ``"position"`` (one gate per position).
            Linear and embedding blocks always gate per token.
        damping: relative damping of the input covariance before whitening (times its mean diagonal).
        seed: seed of the random deviations / random init, for reproducible surgery: an int in
            [0, 2**32 - 1].
        prune: structured channel pruning before the inheritance (see :mod:`inhernet.pruning`): the
            share in [0, 1) of the teacher's channels that Torch-Pruning removes (global L2 ranking,
            layer by layer for transformers; whole heads for BERT-style attention; the output layer
            kept), after which the rank allocator spends the rest of the *same* budget — ``budget=`` /
            ``macs=`` / ``latency=`` stay relative to the original teacher (its parameters, MACs or
            measured time) — on the pruned model's layers (under ``latency=`` priced by the same cost
            table, the pruned model's fixed rest measured whole).
            ``"auto"``: choose the share: the candidates are found from the budget (the largest share
            whose pruned model is still over it, so that ranks are left to cut, and the smallest share
            whose smallest ranks reach it, by bisection on the layers' prices, before any spectrum;
            :func:`inhernet.autoprune.candidate_shares`), and each candidate student is scored by its
            KL to the teacher's logits after ``prune_probe_steps`` short KD steps (see below); a
            candidate that cannot meet the budget after all is skipped (score ``None``, the reason in
            the record's ``skipped``). The plan records the bracket, the choice and every score.
            ``None`` (the default): no pruning.
            Needs ``calib`` (Torch-Pruning traces the model on its first batch); not for causal LMs or
            per-group ``budgets``.
        prune_probe_steps: with ``prune="auto"``, how each candidate student is scored: ``0`` by its
            zero-shot KL to the teacher on all calibration batches; ``N >= 1`` by its KL on the last
            quarter of the calibration batches (at least one, held out) after ``N`` KD steps on the
            others (Adam, a fixed small lr, KL at temperature 4, seeded by ``seed``); the candidate's
            weights are restored afterwards, so the student returned is the winning share's inherited
            (untrained) one. ``N >= 1`` needs at least 2 calibration batches. ``None`` (the
            default): :data:`DEFAULT_PROBE_STEPS` under ``prune="auto"``, resolved when the student is
            built (its plan's config holds the number used). Only with ``prune="auto"``.
        drop_blocks: in a stack of transformer blocks, the share in [0, 1] of the parameters the budget
            cuts that is paid by dropping whole blocks (those of lowest Block Influence on ``calib``),
            the rest by rank cuts on the blocks left, at the same absolute budget (``1``: as many blocks
            as leave some rank to cut; see
            :mod:`inhernet.blockdrop`; the plan's ``drop`` records the blocks kept, which
            :func:`inhernet.load` replays). Only with ``budget=``. ``0``: no block is dropped. ``None``
            (the default): the family's under a plain ``budget=`` with ``init="whiten"`` on a model with a
            stack of blocks (1 for causal LMs, see :mod:`inhernet.families`), else none.

    numpy integers are accepted wherever an ``int`` is (and numpy floats where a ``float`` is); they
    are stored as Python numbers, so :meth:`to_dict` stays JSON-serialisable.
    """

    budget: float | int | None = None
    budgets: Mapping[str, float | int] = field(default_factory=dict)
    rank: int | float | Literal["full"] | None = None
    energy: float | None = None
    macs: float | int | None = None
    latency: float | None = None
    latency_rows: int | None = 1
    experts: int | None = None
    init: Literal["whiten", "svd", "random"] = "whiten"
    allocation: Literal["energy", "loss", "loss-by-type", "uniform"] = "energy"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_rank: int = 1
    min_rank_ratio: float | None = None
    calibration: Literal["one-pass", "sequential", "sequential-corrected"] | None = None
    expert_noise: float = 0.02
    routing: Literal["soft", "top1"] = "soft"
    gate_pool: Literal["mean", "position"] = "mean"
    damping: float = 1e-4
    seed: int = 0
    family: str | None = None
    prune: float | Literal["auto"] | None = None
    prune_probe_steps: int | None = None
    drop_blocks: float | None = None

    @classmethod
    def paper(cls, **overrides: Any) -> InherConfig:
        """The method as published (Zhou et al., ICLR 2026): h = 3 experts, one-pass whitening, no
        rank floor, every block kept, whatever the model's family; ``overrides`` set any other field (e.g.
        ``budget``)."""
        return cls(**{"experts": 3, "calibration": "one-pass", "min_rank_ratio": 0.0, "drop_blocks": 0.0, **overrides})

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, plain_number(getattr(self, f.name)))
        if isinstance(self.budgets, Mapping):
            self.budgets = {k: plain_number(v) for k, v in self.budgets.items()}
        chosen = [k for k in RANK_CHOICES if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(
                f"InherConfig takes one of budget=, rank=, energy=, macs= or latency=, got {' and '.join(chosen)}; "
                "drop all but one"
            )
        if not chosen:
            self.budget = DEFAULT_BUDGET
        self.include = _as_patterns("include", self.include)
        self.exclude = _as_patterns("exclude", self.exclude)
        self._check_budget()
        self._check_budgets(chosen)
        if self.macs is not None:
            _check_amount("macs", self.macs, unit="MAC", of="multiply-accumulates")
        if self.latency is not None:
            self._check_latency()
        if self.latency_rows is not None and (
            isinstance(self.latency_rows, bool) or not isinstance(self.latency_rows, int) or self.latency_rows < 1
        ):
            raise ValueError(f"latency_rows must be an int >= 1 or None (the example batch only), got {self.latency_rows!r}")
        self._check_rank()
        if self.energy is not None and not (_is_real(self.energy) and 0 < self.energy <= 1):
            raise ValueError(f"energy must be a fraction in (0, 1], got {self.energy!r}")
        if self.experts is not None and (
            isinstance(self.experts, bool) or not isinstance(self.experts, int) or self.experts < 1
        ):
            raise ValueError(f"experts must be an int >= 1 (or None: the model family's default), got {self.experts!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if isinstance(self.min_rank, bool) or not isinstance(self.min_rank, int) or self.min_rank < 1:
            raise ValueError(f"min_rank must be an int >= 1, got {self.min_rank!r}")
        if self.min_rank_ratio is not None and not (_is_real(self.min_rank_ratio) and 0 <= self.min_rank_ratio < 1):
            raise ValueError(
                f"min_rank_ratio must be a fraction in [0, 1) of each layer's full rank, got {self.min_rank_ratio!r}"
            )
        if self.calibration is not None and self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS} (or None: the family's), got {self.calibration!r}")
        if self.family is not None and self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES} (or None: detected from the model), got {self.family!r}")
        if not (_is_real(self.expert_noise) and self.expert_noise >= 0):
            raise ValueError(f"expert_noise must be a number >= 0, got {self.expert_noise!r}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.gate_pool not in GATE_POOLS:
            raise ValueError(f"gate_pool must be one of {GATE_POOLS}, got {self.gate_pool!r}")
        if not (_is_real(self.damping) and self.damping >= 0):
            raise ValueError(f"damping must be a number >= 0, got {self.damping!r}")
        check_seed("seed", self.seed)
        self._check_prune(chosen)
        self._check_probe_steps()
        self._check_drop_blocks()

    def _check_drop_blocks(self) -> None:
        d = self.drop_blocks
        if d is None:
            return
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d):
            raise TypeError(
                f"drop_blocks must be a share in [0, 1] of the parameter cut paid with whole blocks, got {d!r}"
            )
        if not 0 <= d <= 1:
            raise ValueError(
                f"drop_blocks={d} is not a share in [0, 1] of the parameters the budget cuts; e.g. drop_blocks=0.5 "
                "pays half of the cut with whole blocks, the rest with rank cuts, and 1 as many blocks as fit"
            )
        self.drop_blocks = float(d)
        if d and (self.budget is None or self.budgets or self.prune is not None):
            raise ValueError(
                f"drop_blocks={d:g} pays part of a parameter budget with whole blocks: it works with budget= alone "
                "(not with macs=, latency=, a rank or energy rule, budgets= or prune=); drop drop_blocks or use "
                "budget="
            )

    def _check_prune(self, chosen: list[str]) -> None:
        p = self.prune
        if p is None:
            return
        if p != "auto" and (isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p)):
            raise TypeError(
                f"prune must be a share in [0, 1) of the teacher's channels, 'auto' or None, got {p!r}"
            )
        if p != "auto" and not 0 <= p < 1:
            raise ValueError(
                f"prune={p} is not a share in [0, 1) of the teacher's channels; give e.g. prune=0.3, or "
                "prune='auto' to choose it"
            )
        if p != "auto":
            self.prune = float(p)
        if self.budgets:
            raise ValueError(
                "prune= works with budget=, macs= or latency= (or a rank/energy rule), not with budgets=: drop "
                "prune= or use budget="
            )
        if p == "auto" and not self.target.budgeted:
            raise ValueError(
                "prune='auto' compares students at one budget: give budget=, macs= or latency= (or a fixed "
                f"prune=0.3 with {chosen[0]}=)"
            )

    def _check_probe_steps(self) -> None:
        n = self.prune_probe_steps
        if n is None:
            return
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(
                f"prune_probe_steps must be an int >= 0 (KD steps per prune='auto' candidate; 0: zero-shot) "
                f"or None (the default, {DEFAULT_PROBE_STEPS}), got {n!r}"
            )
        if n < 0:
            raise ValueError(
                f"prune_probe_steps={n} must be >= 0: the KD steps each prune='auto' candidate gets before it is "
                "scored (0: scored zero-shot)"
            )
        if self.prune != "auto":
            raise ValueError(
                f"prune_probe_steps={n} scores the candidates of prune='auto', but prune={self.prune!r}: set "
                "prune='auto' or drop prune_probe_steps"
            )

    def _check_budget(self) -> None:
        if self.budget is not None:
            _check_amount("budget", self.budget)

    def _check_budgets(self, chosen: list[str]) -> None:
        if not isinstance(self.budgets, Mapping):
            raise TypeError(
                f"budgets must map module-name patterns to budgets, e.g. {{'vision_model*': 0.3}}, "
                f"got {self.budgets!r}"
            )
        self.budgets = dict(self.budgets)
        if self.budgets and chosen and chosen != ["budget"]:
            raise ValueError(
                f"budgets= sets parameter budgets per group of modules; it cannot be combined with {chosen[0]}=. "
                "Use budget= for the modules no pattern matches"
            )
        for pattern, b in self.budgets.items():
            if not isinstance(pattern, str) or not pattern:
                raise TypeError(f"budgets keys must be non-empty fnmatch patterns of module names, got {pattern!r}")
            _check_amount(f"budgets[{pattern!r}]", b)

    def _check_latency(self) -> None:
        t = self.latency
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise TypeError(f"latency must be a fraction in (0, 1] of the teacher's measured latency, got {t!r}")
        if not 0 < t <= 1:
            raise ValueError(
                f"latency={t} is not a fraction in (0, 1]; give e.g. latency=0.5 for half of the teacher's "
                "measured latency on the example input"
            )
        self.latency = float(t)

    def _check_rank(self) -> None:
        r = self.rank
        if r is None or r == "full":
            return
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise TypeError(f"rank must be an int >= 1, a fraction in (0, 1] or 'full', got {r!r}")
        if isinstance(r, int) and r < 1:
            raise ValueError(f"rank={r} must be >= 1")
        if isinstance(r, float) and not 0 < r <= 1:
            raise ValueError(f"rank={r} as a float must be a fraction of the full rank in (0, 1]")

    def resolved(self, model: Any) -> InherConfig:
        """This config with its ``None`` (auto) fields filled in for ``model``'s family."""
        return resolve_config(self, model)

    @property
    def target(self) -> Target:
        """The one ranks choice set (``budget``, ``rank``, ``energy``, ``macs`` or ``latency``), tagged."""
        key = next(k for k in RANK_CHOICES if getattr(self, k) is not None)
        return Target(TARGET_KINDS[key], getattr(self, key))  # type: ignore[arg-type]

    @property
    def full_rank(self) -> bool:
        """``True`` in the verification mode ``rank="full"``."""
        return self.rank == "full"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; ``InherConfig(**d)`` rebuilds the config."""
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        d["budgets"] = dict(self.budgets)
        if d["latency_rows"] == 1:
            del d["latency_rows"]  # the default, absent as in the configs recorded before the field existed
        for key in ("prune", "prune_probe_steps", "drop_blocks"):
            if d[key] is None:
                # absent rather than null, so that the configs (and benchmark parts) recorded before the
                # field existed stay equal to today's
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InherConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ }
        for key in ("include", "exclude"):
            if key in known:
                known[key] = tuple(known[key])
        if all(known.get(k) is None for k in RANK_CHOICES):
            known.pop("budget", None)
        return cls(**known)


def _check_amount(arg: str, b: object, unit: str = "parameter", of: str = "parameters") -> None:
    """A budget: a float fraction in (0, 1] of the teacher's ``of`` or an int count >= 1 of ``unit``s;
    ``arg`` names it in errors."""
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
        raise TypeError(f"{arg} must be a fraction in (0, 1] or a {unit} count, got {b!r}")
    if isinstance(b, float) and not 0 < b <= 1:
        raise ValueError(
            f"{arg}={b} is not a fraction in (0, 1]; give e.g. 0.25 for a quarter of the teacher's "
            f"{of}, or an int for an absolute {unit} count"
        )
    if isinstance(b, int) and b < 1:
        raise ValueError(f"{arg}={b} must be a positive {unit} count (or a float fraction)")


def plain_number(x: object) -> object:
    """A numpy (or other ``numbers``) integer as an ``int``, a real as a ``float``; anything else as is.

    Booleans stay booleans (and are refused where a number is expected).
    """
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or type(x) in (int, float):
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    return float(x)


def check_seed(arg: str, seed: object) -> None:
    """``seed`` must be an int in [0, 2**32 - 1] (what torch, numpy and Lightning all accept)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{arg} must be an int in [0, {MAX_SEED}], got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{arg}={seed} is out of range: give an int in [0, {MAX_SEED}], e.g. {arg}=0")


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _as_patterns(arg: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    try:
        patterns = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{arg} must be a string or a sequence of name patterns, got {value!r}") from None
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"{arg} patterns must be strings, got {p!r}")
    return patterns


def resolve_config(config: InherConfig, model: nn.Module) -> InherConfig:
    """``config`` with its auto (``None``) fields and ``family`` filled in for ``model``'s family.

    A config with every field set (e.g. a loaded one) comes back unchanged.
    """
    fields = ("experts", "min_rank_ratio", "calibration")
    family = config.family or model_family(model)
    defaults = FAMILY_DEFAULTS[family]
    filled = {f: getattr(defaults, f) for f in fields if getattr(config, f) is None}
    if config.drop_blocks is None and defaults.drop_blocks and _drops_blocks(config, model):
        filled["drop_blocks"] = defaults.drop_blocks
    if config.family == family and not filled:
        return config
    return replace(config, family=family, **filled)


def _drops_blocks(config: InherConfig, model: nn.Module) -> bool:
    """Whether a family's ``drop_blocks`` applies: a plain parameter budget, whitened (calibrated: Block Influence
    reads the same batches; plain-SVD and random inits keep every block), on a model with a stack of blocks."""
    if config.budget is None or config.budgets or config.prune is not None or config.init != "whiten":
        return False
    try:
        layer_stack(model)
    except ValueError:
        return False
    return True
