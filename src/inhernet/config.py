"""``InherConfig``: what to inherit, at which size, and how to initialise it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

from torch import nn

from ._moved import refuse_moved
from .families import FAMILIES, FAMILY_DEFAULTS, model_family
from .stack import layer_stack

__all__ = ["DEFAULT_BUDGET", "DEFAULT_PROBE_STEPS", "ExperimentalConfig", "InherConfig", "Target", "plain_number"]

DEFAULT_BUDGET = 0.25
#: KD steps each ``prune="auto"`` candidate gets before it is scored (``InherConfig(prune_probe_steps=None)``)
DEFAULT_PROBE_STEPS = 50
#: the inits, allocations and calibrations of the method (:class:`ExperimentalConfig` adds the ablations')
INITS = ("whiten", "svd")
#: the allocations that rank moves by (weighted) energy (see :func:`inhernet.costs.prices.energy_weights`)
ENERGY_STRATEGIES = ("energy", "loss", "loss-by-type")
ALLOCATIONS = ("energy", "loss")
CALIBRATIONS = ("one-pass", "sequential")
#: the ablation knobs that InherConfig refuses, and where they went
MOVED = ("min_rank", "expert_noise")
#: the gate variants that lost every measurement, removed; what both configs say when given one
REMOVED = {
    knob: f"{what} was removed in inhernet 0.1.0: it did not make h > 1 experts beat h = 1 "
    "(benchmarks/results/experts-pay-mnist-cnn-0.1*.md)"
    for knob, what in (("routing", "top-1 routing"), ("gate_pool", "the per-position conv gate"))
}
#: the mutually exclusive ways of choosing ranks
RANK_CHOICES = ("budget", "rank", "energy", "macs", "latency")
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Target:
    """What the student is cut to: ``kind`` a budget (``"params"``, ``"macs"``, ``"latency"``) or a rule per
    layer (``"rank"``, ``"energy"``); ``value`` the number (or ``"full"``) the config was given."""

    kind: Literal["params", "macs", "latency", "rank", "energy"]
    value: float | int | str

    @property
    def budgeted(self) -> bool:
        """A budget over the whole model, not a rule per layer."""
        return self.kind in ("params", "macs", "latency")

    def of(self, whole: int) -> int:
        """The budget as an absolute count of ``whole`` (the teacher's parameters, MACs or ns)."""
        assert self.budgeted and not isinstance(self.value, str)
        return int(self.value * whole) if isinstance(self.value, float) else int(self.value)


@refuse_moved({
    **{knob: f"it moved: pass {knob}=... to inhernet.experimental.ExperimentalConfig (an ablation knob), "
       f"e.g. ExperimentalConfig({knob}=..., budget=0.25)" for knob in MOVED},
    **REMOVED,
})
@dataclass
class InherConfig:
    """What to inherit: how the ranks are chosen, and how the blocks are initialised.

    Exactly one ranks choice (``budget``, ``rank``, ``energy``, ``macs`` or ``latency``; default
    ``budget=0.25``), read as :attr:`target`. ``None`` fields are the family's (:mod:`inhernet.families`).

    Args:
        budget: the student's parameters, a fraction in (0, 1] of the teacher's or an ``int`` count.
        budgets: per-group parameter budgets, ``{fnmatch pattern of module names: budget}``; each group
            is filled to its own, the modules no pattern matches to ``budget``. Only with ``budget``.
        rank: one rank for every layer: an ``int``, a fraction of each layer's full rank, or ``"full"``
            (the student reproduces the teacher, a verification mode).
        energy: per layer, the smallest rank that keeps this fraction of its (whitened) spectral energy.
        macs: a budget in multiply-accumulates on the example input (the first ``calib`` batch, whole),
            as :func:`inhernet.count_macs` counts them; a fraction or an ``int`` count.
        latency: a budget in measured time: the compact student's forward pass on the example input as a
            fraction in (0, 1] of the teacher's, layers priced by a cost table (:class:`inhernet.CostTable`).
        latency_rows: under ``latency``, the budget also holds at a batch of this many rows (default 1:
            one request); ``None``: at the example batch only.
        experts: gated experts ``h`` per block (1: plain low rank). ``None``: the family's (1 so far);
            ``InherConfig.paper()`` is the method as published (h = 3).
        init: ``"whiten"`` (SVD of ``W chol(XX^T/N)``, needs ``calib``) or ``"svd"`` (plain truncated SVD).
        allocation: ``"energy"`` (greedy on retained energy per unit of cost, each layer's energy as a
            fraction of its own) or ``"loss"`` (on absolute whitened truncation loss, across layers).
        include: ``fnmatch`` patterns of module names to consider (empty: all).
        exclude: patterns of module names to keep dense (a pattern also matches the name's descendants).
        min_rank_ratio: a floor on each layer's rank, a fraction in [0, 1) of its full rank; a layer whose
            floor saves nothing stays dense. ``None``: the family's (0.25 for causal LMs, else 0).
        calibration: ``"one-pass"`` (on the teacher's inputs) or ``"sequential"`` (block by block, on inputs
            that passed the compressed blocks, :mod:`inhernet.sequential`); ``None``: the family's.
        damping: relative damping of the input covariance before whitening.
        seed: seed of the experts' deviations, an int in [0, 2**32 - 1].
        family: ``"conv"``, ``"encoder"``, ``"causal-lm"`` or ``"other"``; ``None``: detected.
        prune: a share in [0, 1) of the teacher's channels pruned first (Torch-Pruning, L2), the rest of
            the same budget paid in ranks (:mod:`inhernet.pruning`); ``"auto"``: the share chosen by
            scoring candidates (:mod:`inhernet.autoprune`). Needs ``calib``; not for causal LMs. ``None``: no
            pruning, unless a ``macs`` or ``latency`` budget is out of rank cuts' reach: then ``"auto"``, said.
        prune_probe_steps: with ``prune="auto"``, the KD steps each candidate gets before its held-out KL
            is scored (0: zero-shot); ``None``: :data:`DEFAULT_PROBE_STEPS`.
        drop_blocks: the share in [0, 1] of a ``budget``'s cut paid by dropping whole blocks of lowest
            Block Influence (:mod:`inhernet.blockdrop`); ``None``: the family's (1 for causal LMs).
    """

    budget: float | int | None = None
    budgets: Mapping[str, float | int] = field(default_factory=dict)
    rank: int | float | Literal["full"] | None = None
    energy: float | None = None
    macs: float | int | None = None
    latency: float | None = None
    latency_rows: int | None = 1
    experts: int | None = None
    init: Literal["whiten", "svd"] = "whiten"
    allocation: Literal["energy", "loss"] = "energy"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_rank_ratio: float | None = None
    calibration: Literal["one-pass", "sequential"] | None = None
    damping: float = 1e-4
    seed: int = 0
    family: str | None = None
    prune: float | Literal["auto"] | None = None
    prune_probe_steps: int | None = None
    drop_blocks: float | None = None

    # the ablation knobs, fixed here (:class:`ExperimentalConfig` makes them fields)
    min_rank: ClassVar[int] = 1
    expert_noise: ClassVar[float] = 0.02
    INITS: ClassVar[tuple[str, ...]] = INITS
    ALLOCATIONS: ClassVar[tuple[str, ...]] = ALLOCATIONS
    CALIBRATIONS: ClassVar[tuple[str, ...]] = CALIBRATIONS

    @classmethod
    def paper(cls, **overrides: Any) -> InherConfig:
        """The method as published (Zhou et al., ICLR 2026): h = 3, one-pass whitening, no rank floor, every
        block kept; ``overrides`` set any other field (e.g. ``budget``)."""
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
        if self.budget is not None:
            _check_amount("budget", self.budget)
        self._check_budgets(chosen)
        if self.macs is not None:
            _check_amount("macs", self.macs, unit="MAC", of="multiply-accumulates")
        if self.latency is not None:
            self._check_latency()
        self._check_rank()
        check_fields(self, _RULES)
        self._check_choice("init")
        self._check_choice("allocation")
        self._check_choice("calibration", " (or None: the family's)")
        check_seed("seed", self.seed)
        self._check_prune(chosen)
        self._check_probe_steps()
        self._check_drop_blocks()

    def _check_choice(self, name: str, none: str = "") -> None:
        """``name``'s value is one of this class's choices (or ``None`` where ``none`` says what it means);
        an ablation's is told where it went."""
        key = name.upper() + "S"
        value, allowed = getattr(self, name), getattr(type(self), key)
        if value in allowed or (none and value is None):
            return
        ablation = value in getattr(ExperimentalConfig, key)
        where = "; it is an ablation: use inhernet.experimental.ExperimentalConfig" if ablation else ""
        raise ValueError(f"{name} must be one of {allowed}{none}, got {value!r}{where}")

    def _check_drop_blocks(self) -> None:
        d = self.drop_blocks
        if d is None:
            return
        if not is_real(d):
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
        if p != "auto" and not is_real(p):
            raise TypeError(
                f"prune must be a share in [0, 1) of the teacher's channels, 'auto' or None, got {p!r}"
            )
        if p != "auto" and not 0 <= p < 1:
            raise ValueError(
                f"prune={p} is not a share in [0, 1) of the teacher's channels; give e.g. prune=0.3, or "
                "prune='auto' to choose it"
            )
        self.prune = p if p == "auto" else float(p)
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
        if not is_int(n):
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

    def _check_budgets(self, chosen: list[str]) -> None:
        if not isinstance(self.budgets, Mapping):
            raise TypeError(
                f"budgets must map module-name patterns to budgets, e.g. {{'vision_model*': 0.3}}, "
                f"got {self.budgets!r}"
            )
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
        if not is_real(t):
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
        """This config with its ``None`` (auto) fields and ``family`` filled in for ``model``'s family
        (itself when all are set)."""
        family = self.family or model_family(model)
        defaults = FAMILY_DEFAULTS[family]
        filled = {f: getattr(defaults, f) for f in ("experts", "min_rank_ratio", "calibration")
                  if getattr(self, f) is None}
        if self.drop_blocks is None and defaults.drop_blocks and _drops_blocks(self, model):
            filled["drop_blocks"] = defaults.drop_blocks
        if self.family == family and not filled:
            return self
        return replace(self, family=family, **filled)

    @property
    def target(self) -> Target:
        """The one ranks choice set (``budget``, ``rank``, ``energy``, ``macs`` or ``latency``), tagged."""
        key = next(k for k in RANK_CHOICES if getattr(self, k) is not None)
        return Target("params" if key == "budget" else key, getattr(self, key))  # type: ignore[arg-type]

    @property
    def full_rank(self) -> bool:
        """``True`` in the verification mode ``rank="full"``."""
        return self.rank == "full"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; ``InherConfig(**d)`` rebuilds the config."""
        d = {**asdict(self), "include": list(self.include), "exclude": list(self.exclude)}
        # defaults absent, so that the configs recorded before these fields existed stay equal to today's
        omitted = {"latency_rows": 1, "prune": None, "prune_probe_steps": None, "drop_blocks": None}
        return {k: v for k, v in d.items() if k not in omitted or v != omitted[k]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InherConfig:
        """The config ``d`` (:meth:`to_dict`) records (an ExperimentalConfig if it names an ablation)."""
        if cls is InherConfig and _is_experimental(d):
            cls = ExperimentalConfig
        known = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        if all(known.get(k) is None for k in RANK_CHOICES):
            known.pop("budget", None)
        return cls(**known)


#: InherConfig's checks of one field each: (field, whether its value is valid, what it must be)
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("latency_rows", lambda v: v is None or is_int(v, 1), "an int >= 1 or None (the example batch only)"),
    ("energy", lambda v: v is None or (is_real(v) and 0 < v <= 1), "a fraction in (0, 1]"),
    ("experts", lambda v: v is None or is_int(v, 1), "an int >= 1 (or None: the model family's default)"),
    ("min_rank_ratio", lambda v: v is None or (is_real(v) and 0 <= v < 1),
     "a fraction in [0, 1) of each layer's full rank"),
    ("family", lambda v: v is None or v in FAMILIES, f"one of {FAMILIES} (or None: detected from the model)"),
    ("damping", lambda v: is_real(v) and v >= 0, "a number >= 0"),
)


def check_fields(obj: object, rules: Iterable[tuple[str, Callable[[Any], bool], str]], prefix: str = "") -> None:
    """Raise ``ValueError("{prefix}{field} must be {expected}, got {value!r}")`` for the first field of
    ``obj`` that its rule refuses."""
    for name, valid, expected in rules:
        value = getattr(obj, name)
        if not valid(value):
            raise ValueError(f"{prefix}{name} must be {expected}, got {value!r}")


def _check_amount(arg: str, b: object, unit: str = "parameter", of: str = "parameters") -> None:
    """A budget: a fraction in (0, 1] of the teacher's ``of`` or a count of ``unit``s; ``arg`` names it."""
    if not is_real(b):
        raise TypeError(f"{arg} must be a fraction in (0, 1] or a {unit} count, got {b!r}")
    if isinstance(b, float) and not 0 < b <= 1:
        raise ValueError(
            f"{arg}={b} is not a fraction in (0, 1]; give e.g. 0.25 for a quarter of the teacher's "
            f"{of}, or an int for an absolute {unit} count"
        )
    if isinstance(b, int) and b < 1:
        raise ValueError(f"{arg}={b} must be a positive {unit} count (or a float fraction)")


def plain_number(x: object) -> object:
    """A numpy (or other ``numbers``) integer as an ``int``, a real as a ``float``; anything else (booleans
    included) as is."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or type(x) in (int, float):
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    return float(x)


def check_seed(arg: str, seed: object) -> None:
    """``seed`` must be an int in [0, 2**32 - 1] (what torch, numpy and Lightning all accept)."""
    if not is_int(seed):
        raise TypeError(f"{arg} must be an int in [0, {MAX_SEED}], got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{arg}={seed} is out of range: give an int in [0, {MAX_SEED}], e.g. {arg}=0")


def is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_int(x: object, least: int | None = None) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and (least is None or x >= least)


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


def _drops_blocks(config: InherConfig, model: nn.Module) -> bool:
    """Whether a family's ``drop_blocks`` applies: a plain whitened parameter budget (Block Influence reads
    the calibration batches) on a model with a stack of blocks."""
    if config.budget is None or config.budgets or config.prune is not None or config.init != "whiten":
        return False
    try:
        layer_stack(model)
    except ValueError:
        return False
    return True


def _is_experimental(d: dict[str, Any]) -> bool:
    """Whether the saved config ``d`` needs :class:`ExperimentalConfig`: an ablation's value anywhere."""
    choices = {"init": INITS, "allocation": ALLOCATIONS, "calibration": (*CALIBRATIONS, None)}
    return any(k in d and d[k] != getattr(InherConfig, k) for k in MOVED) or any(
        k in d and d[k] not in allowed for k, allowed in choices.items()
    )


@refuse_moved(REMOVED)
@dataclass
class ExperimentalConfig(InherConfig):
    """:class:`InherConfig` with the knobs of the ablations in BENCHMARKS.md (none beat the defaults); it also
    takes ``init="random"`` and ``allocation="loss-by-type"`` / ``"uniform"``.

    Args:
        min_rank: the smallest rank a factorised layer gets (under ``min_rank_ratio``'s floor, if larger).
        expert_noise: each expert's zero-sum deviation, a fraction of ``||U_r S_r||`` (the init stays exact).
    """

    min_rank: int = 1  # type: ignore[misc]
    expert_noise: float = 0.02  # type: ignore[misc]
    INITS: ClassVar[tuple[str, ...]] = (*INITS, "random")
    ALLOCATIONS: ClassVar[tuple[str, ...]] = (*ENERGY_STRATEGIES, "uniform")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, (
            ("min_rank", lambda v: is_int(v, 1), "an int >= 1"),
            ("expert_noise", lambda v: is_real(v) and v >= 0, "a number >= 0"),
        ))
