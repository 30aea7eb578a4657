"""``plan()``: which layers to factorise at which rank, and what the model will weigh — no mutation."""

from __future__ import annotations

import fnmatch
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .budget import LayerCost, allocate, floor_rank, mac_price, minimum_cost, ranks_for_energy, ranks_for_rank
from .calibration import collect_covariances, example_positions, split_example
from .config import InherConfig
from .decomposition import Factors, factorize
from .kinds import LayerKind, dense_params, kind_of

__all__ = ["LayerPlan", "Plan", "plan"]

FACTORISED = "factorised"
# Modules whose forward reads a descendant's ``.weight`` directly (its dtype, its row count), which a
# block has no single one of: (package of the reader's class, suffix of its class name, the paths it
# reads). Hugging Face's CLIP family (CLIP, SigLIP, X-CLIP, AltCLIP, CLIPSeg...) in its embeddings,
# open_clip's residual attention blocks for their cast dtype.
_WEIGHT_READERS = (
    ("transformers.", "Embeddings", ("patch_embedding", "position_embedding")),
    ("open_clip.", "ResidualAttentionBlock", ("mlp.c_fc",)),
)
# A plan under a budget (parameters or MACs) lands at or below it and within 2% of it.
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

    The MAC fields are known under a MAC budget (``InherConfig(macs=...)``), ``None`` otherwise: the
    multiply-accumulates of one forward pass on the example input (the first calib batch, whole) of
    the teacher, of the target and of the inherited model, as :func:`inhernet.deploy.count_macs`
    counts them.
    """

    config: InherConfig
    teacher_params: int
    target_params: int | None
    layers: list[LayerPlan] = field(default_factory=list)
    teacher_macs: int | None = None
    target_macs: int | None = None
    total_macs: int | None = None

    @property
    def total_params(self) -> int:
        """Parameters of the inherited model, everything included."""
        return self.teacher_params - sum(r.params_before - r.params_after for r in self.layers)

    @property
    def ratio(self) -> float:
        return self.total_params / self.teacher_params

    @property
    def factorised(self) -> list[LayerPlan]:
        return [r for r in self.layers if r.factorised]

    def ranks(self) -> dict[str, int]:
        return {r.name: r.rank for r in self.layers if r.rank is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "teacher_params": self.teacher_params,
            "target_params": self.target_params,
            "total_params": self.total_params,
            "teacher_macs": self.teacher_macs,
            "target_macs": self.target_macs,
            "total_macs": self.total_macs,
            "layers": [asdict(r) for r in self.layers],
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
        text = (
            f"{len(self.factorised)} of {len(self.layers)} layers factorised, experts={self.config.experts}, "
            f"init={self.config.init}: {self.teacher_params:,} -> {self.total_params:,} parameters "
            f"({self.ratio:.1%}{target})"
        )
        if self.teacher_macs is not None and self.total_macs is not None:
            share = self.total_macs / self.teacher_macs if self.teacher_macs else 1.0
            target = f", target {self.target_macs:,}" if self.target_macs is not None else ""
            text += f"; {self.teacher_macs:,} -> {self.total_macs:,} MACs ({share:.1%}{target})"
        return text

    def __str__(self) -> str:
        return self.to_markdown()


@dataclass
class Candidate:
    """A supported layer that may be factorised (``reason`` is set when it must stay dense)."""

    name: str
    module: nn.Module
    kind: LayerKind
    reason: str | None = None


def _matches(name: str, patterns: Iterable[str]) -> str | None:
    for p in patterns:
        if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*"):
            return p
    return None


def find_layers(model: nn.Module, config: InherConfig) -> tuple[list[Candidate], list[LayerPlan]]:
    """Supported layers (with the reason when one must stay dense) and rows for unsupported ones."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    module_uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    param_uses = Counter(
        id(p) for _, m in model.named_modules(remove_duplicate=False) for p in m.parameters(recurse=False)
    )
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    modules = dict(model.named_modules())
    candidates, others = [], []
    for name, module in model.named_modules():
        own = dense_params(module)
        if own == 0:
            continue
        kind = kind_of(module)
        if kind is None:
            reason = f"unsupported layer type {type(module).__name__}; kept as is"
            others.append(LayerPlan(name, type(module).__name__, "-", None, None, 1, own, own, reason))
            continue
        reason = kind.dense_reason(module)
        if reason is None:
            reason = _dense_by_config(name, config)
        if reason is None and isinstance(parents.get(id(module)), nn.MultiheadAttention):
            reason = "projection read directly by nn.MultiheadAttention; kept dense"
        if reason is None:
            reason = _weight_reader(name, modules)
        if reason is None and module_uses[id(module)] > 1:
            reason = "module instance shared at several places; kept dense"
        if reason is None and any(param_uses[id(p)] > 1 for p in module.parameters(recurse=False)):
            reason = "weight tied to another module; kept dense"
        if reason is None:
            _check_weight(name, kind.weight(module))
        candidates.append(Candidate(name, module, kind, reason))
    return candidates, others


def _weight_reader(name: str, modules: dict[str, nn.Module]) -> str | None:
    """Why ``name`` stays dense when a known ancestor reads its ``.weight`` directly (see _WEIGHT_READERS)."""
    for package, suffix, paths in _WEIGHT_READERS:
        for path in paths:
            if name != path and not name.endswith("." + path):
                continue
            reader = type(modules.get(name[: -len(path)].rstrip(".")))
            if reader.__module__.startswith(package) and reader.__name__.endswith(suffix):
                return f"weight read directly by {reader.__name__}; kept dense"
    return None


def _dense_by_config(name: str, config: InherConfig) -> str | None:
    if config.include and _matches(name, config.include) is None:
        return "not matched by include patterns"
    hit = _matches(name, config.exclude)
    return f"excluded by pattern {hit!r}" if hit is not None else None


def _check_weight(name: str, w: torch.Tensor) -> None:
    if not w.is_floating_point():
        raise TypeError(
            f"layer {name!r} has {w.dtype} weights; inheritance needs floating-point weights "
            "(dequantise the model first, or exclude the layer)"
        )
    if not torch.isfinite(w).all():
        raise ValueError(f"layer {name!r} has NaN or infinite weights; fix the teacher or exclude the layer")


@dataclass
class MacProfile:
    """The teacher's MACs on the example input, and per open layer its (output, gate) positions there."""

    total: int
    positions: dict[str, tuple[int, int]]


def factorisable(candidates: list[Candidate]) -> dict[str, tuple[nn.Module, LayerKind]]:
    """The candidates that may be factorised, as ``{name: (module, kind)}``."""
    return {c.name: (c.module, c.kind) for c in candidates if c.reason is None}


def profile_macs(
    model: nn.Module, candidates: list[Candidate], calib: Iterable[Any] | None
) -> tuple[MacProfile, Iterable[Any]]:
    """Count MACs and positions on the first batch of ``calib``; returns ``calib`` to iterate in full."""
    example, calib = split_example(calib, "a MAC budget (macs=)")
    todo = factorisable(candidates)
    total, positions = example_positions(model, todo, example)
    return MacProfile(total, positions), calib


def layer_cost(
    c: Candidate, experts: int, energy: torch.Tensor | None, profile: MacProfile | None = None
) -> LayerCost:
    """The allocator's view of a layer (``energy``: its squared singular values, if known); priced in MACs
    when a profile is given, else in parameters."""
    m, n = c.kind.shape(c.module)
    price = None
    if profile is not None:
        positions, gate_positions = profile.positions.get(c.name, (0, 0))
        price = mac_price(m, experts, positions, gate_positions, *c.kind.mac_rates(c.module))
    return LayerCost(
        c.name, m, n, c.kind.bias(c.module) is not None, experts, dense_params(c.module), energy, price,
    )


def decompose(
    model: nn.Module, candidates: list[Candidate], config: InherConfig, calib: Iterable[Any] | None,
    *, progress: bool = True,
) -> dict[str, Factors]:
    """Full-rank (whitened, with ``init="whiten"``) SVD of every factorisable layer, computed once."""
    todo = factorisable(candidates)
    covariances = {}
    if config.init == "whiten" and todo:
        if calib is None:
            raise ValueError(
                'init="whiten" needs calibration data: pass calib= (an iterable of model input batches), '
                'or use init="svd"'
            )
        covariances = collect_covariances(model, todo, calib, progress=progress)
    return {
        name: factorize(kind.matrix(module), covariances.get(name), config.damping)
        for name, (module, kind) in todo.items()
    }


def layer_spectra(
    model: nn.Module, candidates: list[Candidate], config: InherConfig, calib: Iterable[Any] | None,
    *, progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Every factorisable layer's (whitened, with ``init="whiten"``) energies, for the allocator.

    With sequential calibration they are computed stage by stage on the teacher's own inputs,
    holding one block's statistics at a time, and only the energies are kept.
    """
    if config.init == "whiten" and config.calibration != "one-pass":
        from .sequential import sequential_calibrate

        todo = factorisable(candidates)
        energies: dict[str, torch.Tensor] = {}

        def keep_energy(name: str, module: nn.Module, kind: LayerKind, factors: Factors) -> None:
            energies[name] = factors.energy

        sequential_calibrate(model, todo, reiterable(calib), keep_energy, damping=config.damping, progress=progress)
        return energies
    return {name: f.energy for name, f in decompose(model, candidates, config, calib, progress=progress).items()}


def reiterable(calib: Iterable[Any] | None) -> list[Any]:
    """``calib`` as a list (sequential calibration iterates it more than once)."""
    if calib is None:
        raise ValueError(
            'init="whiten" needs calibration data: pass calib= (an iterable of model input batches), '
            'or use init="svd"'
        )
    return calib if isinstance(calib, list) else list(calib)


def make_plan(
    model: nn.Module, config: InherConfig, candidates: list[Candidate], others: list[LayerPlan],
    spectra: dict[str, torch.Tensor], profile: MacProfile | None = None,
) -> Plan:
    """Allocate ranks and tabulate; ``spectra`` (each layer's energies) may be empty where none is needed.

    ``profile`` (from :func:`profile_macs`) is needed under a MAC budget, and prices the layers in MACs.
    """
    teacher_params = sum(p.numel() for p in model.parameters())
    h = config.experts
    if config.macs is not None and profile is None:
        raise ValueError("a MAC budget (macs=) needs the MAC profile of an example input: pass calib=")
    if config.macs is None:
        profile = None
    open_layers = [layer_cost(c, h, spectra.get(c.name), profile) for c in candidates if c.reason is None]
    if not open_layers:
        found = ", ".join(sorted({type(c.module).__name__ for c in candidates})) or "none"
        raise ValueError(
            "nothing to factorise: the model has no nn.Linear, nn.Conv1d/2d (groups=1), nn.Embedding or "
            f"Hugging Face Conv1D layer left after include/exclude (supported layers found: {found})"
        )
    target = target_macs = None
    if config.rank is not None:
        ranks = ranks_for_rank(open_layers, config.rank, config.min_rank, config.min_rank_ratio)
    elif config.energy is not None:
        ranks = ranks_for_energy(open_layers, config.energy, config.min_rank, config.min_rank_ratio)
    elif profile is not None:
        assert config.macs is not None
        target_macs = _target(config.macs, profile.total, MACS)
        ranks = _fill(open_layers, target_macs, profile.total, MACS, config)
    elif config.budgets:
        ranks, target = _fill_groups(model, open_layers, config)
    else:
        assert config.budget is not None
        target = _target(config.budget, teacher_params, PARAMS)
        ranks = _fill(open_layers, target, teacher_params, PARAMS, config)

    currency = MACS if profile is not None else PARAMS
    rows = []
    costs = {layer.name: layer for layer in open_layers}
    for c in candidates:
        own = dense_params(c.module)
        shape = c.kind.describe(c.module)
        if c.reason is not None:
            rows.append(LayerPlan(c.name, c.kind.name, shape, None, None, 1, own, own, c.reason))
            continue
        layer = costs[c.name]
        rank = ranks[c.name]
        if rank is None:
            if profile is not None and profile.positions.get(c.name, (0, 0))[0] == 0:
                reason = "did not run on the example input; kept dense"
            elif layer.break_even < config.min_rank:
                reason = f"no rank saves {currency.unit}; kept dense"
            elif layer.break_even < floor_rank(layer, config.min_rank, config.min_rank_ratio):
                floor = floor_rank(layer, config.min_rank, config.min_rank_ratio)
                reason = f"no rank saves {currency.unit} at or above its floor rank {floor}; kept dense"
            else:
                reason = "dense fits the budget better than any rank"
            rows.append(LayerPlan(c.name, c.kind.name, shape, None, layer.max_rank, 1, own, own, reason))
        else:
            rows.append(LayerPlan(
                c.name, c.kind.name, shape, rank, layer.max_rank, h, own, layer.params(rank), FACTORISED,
            ))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    result = Plan(config, teacher_params, target, sorted(rows + others, key=lambda r: order.get(r.name, -1)))
    if profile is not None:
        result.teacher_macs, result.target_macs = profile.total, target_macs
        result.total_macs = profile.total - sum(
            layer.cost(None) - layer.cost(ranks[layer.name]) for layer in open_layers
        )
    reached = result.total_macs if profile is not None else result.total_params
    goal = target_macs if profile is not None else target
    if goal is not None and reached is not None and reached < BUDGET_TOLERANCE * goal:
        warnings.warn(
            f"the plan reaches {reached:,} {currency.unit}, more than 2% under the {currency.budget} of "
            f"{goal:,}: the remaining layers' rank steps are too coarse to fill it",
            stacklevel=3,
        )
    return result


@dataclass(frozen=True)
class _Currency:
    """How a budget's currency is named in messages."""

    unit: str  # what is counted: "parameters", "MACs"
    budget: str  # what the budget is called
    option: str  # the InherConfig field
    teacher: str  # qualifies the teacher's total


PARAMS = _Currency("parameters", "budget", "budget", "")
PARAMS_REST = _Currency("parameters", "budget", "budget", " matched by no budgets pattern")
MACS = _Currency("MACs", "MAC budget", "macs", " on the example input")


def _fill(
    layers: list[LayerCost], target: int, teacher_total: int, currency: _Currency, config: InherConfig
) -> dict[str, int | None]:
    """Ranks whose total cost (the fixed rest of the model included) fits ``target``, or a clear error."""
    fixed = teacher_total - sum(layer.cost(None) for layer in layers)
    smallest = fixed + minimum_cost(layers, config.min_rank, config.min_rank_ratio)
    if target < smallest:
        raise ValueError(
            f"{currency.budget} of {target:,} {currency.unit} ({target / teacher_total:.1%} of "
            f"{teacher_total:,}{currency.teacher}) is unreachable: the smallest reachable is {smallest:,} "
            f"({smallest / teacher_total:.1%}) with min_rank={config.min_rank}, min_rank_ratio={config.min_rank_ratio}, experts={config.experts} "
            f"and these include/exclude patterns; raise the {currency.budget}, lower experts or factorise "
            "more layers"
        )
    return allocate(layers, target - fixed, config.allocation, config.min_rank, config.min_rank_ratio)


def _fill_groups(
    model: nn.Module, layers: list[LayerCost], config: InherConfig
) -> tuple[dict[str, int | None], int]:
    """Ranks under ``config.budgets``: each pattern's group filled to its own budget, the rest to
    ``config.budget``; returns the ranks and the summed target."""
    patterns = tuple(config.budgets)
    owned = _params_by_group(model, patterns)
    grouped: dict[str | None, list[LayerCost]] = {p: [] for p in (*patterns, None)}
    for layer in layers:
        grouped[_group_of(layer.name, patterns)].append(layer)
    ranks: dict[str, int | None] = {}
    total = 0
    for pattern in (*patterns, None):
        if pattern is None and not grouped[None]:
            total += owned[None]  # nothing left to factorise outside the groups (e.g. a logit scale)
            continue
        if pattern is None:
            budget, currency = config.budget, PARAMS_REST
        else:
            budget = config.budgets[pattern]
            currency = _Currency(
                "parameters", f"budget of {pattern!r}", f"budgets[{pattern!r}]", f" matched by {pattern!r}"
            )
        assert budget is not None
        target = _target(budget, owned[pattern], currency)
        ranks.update(_fill(grouped[pattern], target, owned[pattern], currency, config))
        total += target
    return ranks, total


def _group_of(name: str, patterns: tuple[str, ...]) -> str | None:
    """The one pattern of ``budgets`` that matches module ``name`` (``None``: the rest)."""
    hits = [p for p in patterns if _matches(name, (p,)) is not None]
    if len(hits) > 1:
        raise ValueError(
            f"module {name!r} is matched by budgets patterns {hits[0]!r} and {hits[1]!r}; each module may "
            "belong to one group only: make the patterns disjoint"
        )
    return hits[0] if hits else None


def _params_by_group(model: nn.Module, patterns: tuple[str, ...]) -> dict[str | None, int]:
    """Teacher parameters per ``budgets`` pattern (``None``: the rest); a pattern matching none is an error."""
    owned: dict[str | None, int] = dict.fromkeys((*patterns, None), 0)
    seen: set[int] = set()
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if id(p) not in seen:  # a tied parameter counts once, with its first owner
                seen.add(id(p))
                owned[_group_of(name, patterns)] += p.numel()
    for pattern in patterns:
        if owned[pattern] == 0:
            sample = ", ".join(n for n, _ in list(model.named_children())[:6])
            raise ValueError(
                f"budgets pattern {pattern!r} matches no module with parameters; top-level modules are "
                f"e.g. {sample}"
            )
    return owned


def _target(budget: float | int, teacher_total: int, currency: _Currency) -> int:
    if isinstance(budget, float):
        return int(budget * teacher_total)
    if budget > teacher_total:
        raise ValueError(
            f"{currency.option}={budget:,} {currency.unit} exceeds the teacher's {teacher_total:,}"
            f"{currency.teacher}; give a smaller count or a fraction in (0, 1]"
        )
    return budget


def plan(model: nn.Module, config: InherConfig | None = None, calib: Iterable[Any] | None = None) -> Plan:
    """Compute the per-layer ranks and parameter totals of ``inherit(model, config, calib)``.

    The model is not modified. Spectra are computed where the allocation needs them; energy
    allocation with ``init="whiten"`` needs ``calib`` for the whitened spectra. A MAC budget
    (``macs=``) needs ``calib`` too: its first batch, whole, is the example input whose MACs
    (:func:`inhernet.deploy.count_macs`) are budgeted.
    """
    config = (config or InherConfig()).resolved(model)  # the family's defaults for the auto fields
    candidates, others = find_layers(model, config)
    profile = None
    if config.macs is not None:
        profile, calib = profile_macs(model, candidates, calib)
    spectra = layer_spectra(model, candidates, config, calib) if allocation_needs_spectra(config) else {}
    return make_plan(model, config, candidates, others, spectra, profile)


def allocation_needs_spectra(config: InherConfig) -> bool:
    budgeted = config.budget is not None or config.macs is not None
    return config.energy is not None or (budgeted and config.allocation == "energy")
