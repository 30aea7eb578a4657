"""Structured channel pruning with Torch-Pruning (``InherConfig(prune=...)``), and its record.

:func:`prune` is the one Torch-Pruning call of the hybrid (docs/design.md, "Pruning first");
:func:`pruned_spec` records what pruning changed as JSON and :func:`apply_spec` replays it, so
:func:`inhernet.load` needs no pickle. Causal LMs are refused (their output layer shares the embedding).
"""

from __future__ import annotations

import copy
import gc
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .batches import device_of, evaluating, forward_batch, hooked, logits_of, move_batch
from .config import InherConfig, is_int
from .costs.macs import count_macs
from .costs.profile import latency_table, measured_ns
from .costs.table import LatencyCosts
from .families import model_family

__all__ = [
    "IMPORTANCES", "LATENCY_ROUND_TO", "PruneRecord", "apply_spec", "attention_heads", "budget_standing", "check_prunable",
    "inner_config", "output_layers", "prune", "prune_for", "pruned_spec", "require_example", "teacher_outputs",
    "unpruned", "zero_shot_loss",
]

#: channel importance criteria: L2 magnitude, or first-order Taylor (on the model's own predictions)
IMPORTANCES = ("l2", "taylor")


def check_prunable(model: nn.Module) -> None:
    """Refuse a model Torch-Pruning cannot prune consistently (a causal LM), with the reason."""
    if model_family(model) == "causal-lm":
        raise ValueError(
            f"cannot prune {type(model).__name__}: a causal LM ties its output layer to the input embeddings, "
            "which pruning the hidden width would cut; prune its FFN channels instead "
            "(inhernet_bench.baselines.llm_prune, what prune-kd does for causal LMs) and leave InherConfig(prune=None)"
        )


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """``{projection: number of heads}`` of every BERT-style attention, Torch-Pruning's ``num_heads``."""
    heads: dict[nn.Module, int] = {}
    for module in model.modules():
        n = getattr(module, "num_attention_heads", None)
        projections = [getattr(module, k, None) for k in ("query", "key", "value")]
        if isinstance(n, int) and all(isinstance(p, nn.Linear) for p in projections):
            heads.update(dict.fromkeys(projections, n))
    return heads


def output_layers(model: nn.Module, example: Any) -> list[nn.Module]:
    """The weight layer whose output is the model's output (the classifier): the last one to run."""
    ran: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: ran.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding))
    ]
    with hooked(hooks), torch.no_grad():
        forward_batch(model, example)
    if not ran:
        raise ValueError(
            f"{type(model).__name__} ran no Linear, Conv or Embedding layer on the example: nothing to prune"
        )
    return [ran[-1]]


#: the channel multiple under a latency budget: the CPU kernels' vector width (29 channels ran slower than 32)
LATENCY_ROUND_TO = 8


def prune(
    model: nn.Module, example: Any, ratio: float, *, importance: str = "l2", ignored: Sequence[nn.Module] = (),
    global_pruning: bool | None = None, max_ratio: float = 0.95, round_to: int | None = None,
) -> nn.Module:
    """A deep copy of ``model`` with a share ``ratio`` in [0, 1) of its channels (and heads) removed.

    Args:
        model: the teacher; not modified.
        example: one input batch (a tensor, an ``(inputs, labels)`` tuple or a dict), used to trace the
            dependency graph and, with ``importance="taylor"``, for the gradients.
        ratio: the pruning ratio (the share of channels removed, per layer or globally).
        importance: ``"l2"`` (magnitude) or ``"taylor"``.
        ignored: modules of ``model`` to keep whole, besides the output layer.
        global_pruning: rank channels across layers (``True``) or prune every layer by ``ratio``
            (``False``); ``None``: globally, except for transformers (models with attention heads).
        max_ratio: no layer loses more than this share of its channels.
        round_to: keep each layer's channel count a multiple of this (``None``: any; :data:`LATENCY_ROUND_TO`).
    """
    check_prunable(model)
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be a fraction in [0, 1), got {ratio!r}")
    names = [name for name, m in model.named_modules() if any(m is i for i in ignored)]
    student = copy.deepcopy(model).eval()
    keep = [*output_layers(student, example), *(student.get_submodule(n) for n in names)]
    heads = attention_heads(student)
    if global_pruning is None:  # ranked globally, a transformer's hidden width never loses to FFN channels
        global_pruning = not heads
    import torch_pruning as tp  # an optional dependency (the "bench" extra): only prune= needs it

    head_ratio = min(ratio, *((n - 1) / n for n in heads.values())) if heads else 0.0  # one head kept
    imp = tp.importance.GroupMagnitudeImportance(p=2) if importance == "l2" else tp.importance.GroupTaylorImportance()
    with torch.enable_grad():
        pruner = tp.pruner.BasePruner(
            student, example, importance=imp, global_pruning=global_pruning, pruning_ratio=ratio,
            max_pruning_ratio=max_ratio, round_to=round_to, ignored_layers=keep, num_heads=heads,
            prune_num_heads=bool(heads), prune_head_dims=not heads, head_pruning_ratio=head_ratio,
            forward_fn=forward_batch, output_transform=logits_of,
        )
        if importance == "taylor":
            student.zero_grad()
            logits = logits_of(forward_batch(student, example))
            flat = logits.reshape(-1, logits.shape[-1])
            nn.functional.cross_entropy(flat, flat.detach().argmax(-1)).backward()
        pruner.step()
    # the pruner's reference cycles hold the trace's activations (GiBs): prune="auto" calls this 10-20 times
    del pruner
    gc.collect()
    student.zero_grad(set_to_none=True)
    _sync_attention(student, heads)
    return student.eval()


def _sync_attention(model: nn.Module, heads: dict[nn.Module, int]) -> None:
    """After head pruning: each attention's head count and width, from its query's width."""
    for module in model.modules():
        query = getattr(module, "query", None)
        if query in heads and isinstance(getattr(module, "attention_head_size", None), int):
            module.num_attention_heads = query.out_features // module.attention_head_size
            if hasattr(module, "all_head_size"):
                module.all_head_size = query.out_features


# -- what pruning changed, as JSON, and replayed on a fresh model ---------------------------------------
Snapshot = dict[str, dict[str, dict[str, Any]]]


def _shape_attrs(module: nn.Module) -> dict[str, Any]:
    """The module's own int (or tuple-of-int) attributes: where layers keep their widths."""
    return {
        key: list(value) if isinstance(value, (tuple, list)) else value
        for key, value in vars(module).items()
        if not key.startswith("_")
        and (is_int(value) or (isinstance(value, (tuple, list)) and value and all(map(is_int, value))))
    }


def _tensor_shapes(module: nn.Module) -> dict[str, list[int]]:
    own = (*module._parameters.items(), *module._buffers.items())
    return {key: list(t.shape) for key, t in own if t is not None}


def _snapshot(model: nn.Module) -> Snapshot:
    """Per module: its int attributes and the shapes of its own parameters and buffers."""
    return {n: {"attrs": _shape_attrs(m), "tensors": _tensor_shapes(m)} for n, m in model.named_modules()}


def pruned_spec(before: nn.Module, after: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module, each int attribute and tensor shape pruning changed, as ``[before, after]`` (JSON).

    Raises:
        ValueError: a non-persistent buffer changed shape (the model could not be saved and loaded).
    """
    old, new = _snapshot(before), _snapshot(after)
    if old.keys() != new.keys():
        raise ValueError("pruning added or removed modules; only widths may change")
    spec: dict[str, dict[str, Any]] = {}
    for name, now in new.items():
        was = old[name]
        attrs = {k: [was["attrs"][k], v] for k, v in now["attrs"].items() if was["attrs"].get(k, v) != v}
        tensors = {k: [was["tensors"][k], s] for k, s in now["tensors"].items() if was["tensors"].get(k, s) != s}
        module = after.get_submodule(name)
        lost = sorted(k for k in tensors if k in module._non_persistent_buffers_set)
        if lost:
            raise ValueError(
                f"pruning changed the non-persistent buffer(s) {', '.join(lost)} of {name!r}: such a model cannot "
                "be saved and loaded; exclude that module from pruning"
            )
        if attrs or tensors:
            spec[name] = {"attrs": attrs, "tensors": tensors}
    return spec


def apply_spec(model: nn.Module, spec: Mapping[str, Any]) -> Callable[[], None]:
    """Give ``model`` (a fresh teacher) the pruned structure ``spec`` (:func:`pruned_spec`) in place:
    attributes set, changed tensors replaced by uninitialised ones (tied ones stay tied). Everything is
    checked before anything changes. Returns a function that restores the model.

    Raises:
        ValueError: a malformed spec or a model it does not fit.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a pruning spec maps module names to changes, got {type(spec).__name__}")
    todo = [_checked_change(model, name, change) for name, change in spec.items()]
    undo: list[Callable[[], None]] = []
    replaced: dict[int, torch.Tensor] = {}  # a tied tensor is replaced once, then shared again
    for module, attrs, tensors in todo:
        for key, (_, value) in attrs.items():
            old_value = getattr(module, key)
            setattr(module, key, tuple(value) if isinstance(old_value, tuple) else value)
            undo.append(lambda m=module, k=key, v=old_value: setattr(m, k, v))
        for key, (_, shape) in tensors.items():
            store = module._parameters if key in module._parameters else module._buffers
            old = store[key]
            assert old is not None
            if id(old) not in replaced:
                fresh = torch.empty(shape, dtype=old.dtype, device=old.device)
                replaced[id(old)] = nn.Parameter(fresh, requires_grad=old.requires_grad) if (
                    isinstance(old, nn.Parameter)) else fresh
            store[key] = replaced[id(old)]
            undo.append(lambda s=store, k=key, t=old: s.__setitem__(k, t))

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


def _checked_change(model: nn.Module, name: Any, change: Any) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Module ``name`` of ``model`` and its recorded attribute and tensor changes, once each "before" value
    is checked against the module as it is (else a ValueError: not the architecture pruned)."""
    if not (isinstance(name, str) and isinstance(change, Mapping) and set(change) <= {"attrs", "tensors"}):
        raise ValueError(f"malformed pruning spec for module {name!r}: {change!r}")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the pruned model's module {name!r} is not in this model: not the architecture pruned") from None
    attrs, tensors = dict(change.get("attrs", {})), dict(change.get("tensors", {}))
    current = _shape_attrs(module)
    for key, pair in attrs.items():
        if not _is_pair(pair) or current.get(key) != pair[0]:
            raise ValueError(
                f"module {name!r}: attribute {key} is {current.get(key)!r} here, the pruning spec expects "
                f"{pair!r} (before, after): not the architecture pruned"
            )
    shapes = _tensor_shapes(module)
    for key, pair in tensors.items():
        got = shapes.get(key)
        if not _is_pair(pair) or got != pair[0] or not all(isinstance(d, int) and d >= 0 for d in pair[1]):
            raise ValueError(
                f"module {name!r}: tensor {key} has shape {got} here, the pruning spec expects {pair!r} "
                "(before, after): not the architecture pruned"
            )
    return module, attrs, tensors


def _is_pair(pair: Any) -> bool:
    return isinstance(pair, (list, tuple)) and len(pair) == 2


# -- the hybrid: budgets relative to the teacher, and the zero-shot score -------------------------------
@dataclass
class PruneRecord:
    """What ``InherConfig(prune=...)`` did: the share removed (``ratio``), the teacher's and the pruned
    model's parameters (MACs, measured ns under such a budget) and the module changes (``spec``).

    With ``prune="auto"``: ``bracket`` the shares the candidates spread over, ``scores`` each one's KL
    to the teacher (``None``: missed the budget, why in ``skipped``), ``probe_steps`` their KD steps."""

    ratio: float
    importance: str
    teacher_params: int
    params: int
    spec: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher_macs: int | None = None
    macs: int | None = None
    scores: dict[str, float | None] | None = None
    teacher_latency_ns: int | None = None
    latency_ns: int | None = None
    skipped: dict[str, str] | None = None
    bracket: list[float] | None = None
    probe_steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        keys = ("ratio", "importance", "teacher_params", "params", "teacher_macs", "macs", "spec")
        d = {key: getattr(self, key) for key in keys}
        if self.teacher_latency_ns is not None:  # absent otherwise, as in older records
            d["teacher_latency_ns"], d["latency_ns"] = self.teacher_latency_ns, self.latency_ns
        auto = {"scores": self.scores, "skipped": self.skipped or None, "bracket": self.bracket,
                "probe_steps": self.probe_steps}  # prune="auto" only
        return d | {key: copy.copy(value) for key, value in auto.items() if value is not None}

    def summary(self) -> str:
        text = (f"pruned {self.ratio:.0%} of the channels (Torch-Pruning, {self.importance}): "
                f"{self.teacher_params:,} -> {self.params:,} parameters")
        if self.teacher_latency_ns is not None and self.latency_ns is not None:
            text += f", {self.teacher_latency_ns / 1e6:.3f} -> {self.latency_ns / 1e6:.3f} ms measured"
        if self.scores is not None:
            scores = ", ".join(f"{k}: {'-' if v is None else f'{v:.4g}'}" for k, v in self.scores.items())
            how = (f"KL on held-out calibration batches after {self.probe_steps} KD steps" if self.probe_steps
                   else "zero-shot KL on the calibration batches")
            text += f"; chosen by {how} ({scores})"
        return text


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_for(
    config: InherConfig, model: nn.Module, example: Any, ratio: float, costs: LatencyCosts | None = None,
    teacher_latency_ns: int | None = None,
) -> tuple[nn.Module, PruneRecord]:
    """``model`` pruned by ``ratio`` (itself at 0) and its record. Under a latency budget both are timed
    on ``example`` by ``costs``; ``teacher_latency_ns``: the teacher's time, if measured already."""
    require_example(example)
    check_prunable(model)
    _logits(model, example)  # a model without logits is refused before Torch-Pruning traces it
    pruned = prune(model, example, ratio, round_to=channel_multiple(config)) if ratio > 0 else model
    record = PruneRecord(ratio, "l2", _params(model), _params(pruned), pruned_spec(model, pruned) if ratio > 0 else {})
    if config.target.kind == "macs":
        record.teacher_macs = count_macs(model, example)
        record.macs = count_macs(pruned, example) if ratio > 0 else record.teacher_macs
    if config.target.kind == "latency":
        table = latency_table(model, costs)
        if teacher_latency_ns is None:
            teacher_latency_ns = measured_ns(table, model, example)
        record.teacher_latency_ns = teacher_latency_ns
        record.latency_ns = measured_ns(table, pruned, example) if ratio > 0 else teacher_latency_ns
    return pruned, record


def channel_multiple(config: InherConfig) -> int | None:
    """The channel multiple ``config`` prunes to: :data:`LATENCY_ROUND_TO` under a latency budget, else any."""
    return LATENCY_ROUND_TO if config.target.kind == "latency" else None


def require_example(example: Any) -> None:
    """Refuse ``prune=`` without calibration data (``example``: its first batch, or ``None``)."""
    if example is None:
        raise ValueError("InherConfig(prune=...) needs calib=: Torch-Pruning traces the model on its first batch")


def unpruned(config: InherConfig, **changes: Any) -> InherConfig:
    """``config`` without ``prune`` and ``prune_probe_steps``, with ``changes``."""
    return replace(config, prune=None, prune_probe_steps=None, **changes)


def budget_standing(config: InherConfig, record: PruneRecord) -> tuple[int, int, str]:
    """``(have, target, unit)``: the pruned model's dense cost in ``config``'s budget, and the target
    taken of the *original* teacher (``have < target``: no rank is left to cut).

    Raises:
        ValueError: ``config`` has no budget (a rank or energy rule), or an absolute count over the teacher's.
    """
    target = config.target
    if target.kind == "latency":
        assert record.teacher_latency_ns is not None and record.latency_ns is not None
        return record.latency_ns, target.of(record.teacher_latency_ns), "ns"
    if not target.budgeted:
        raise ValueError("budget_standing() needs budget=, macs= or latency=, not a rank or energy rule")
    key, unit, whole, have = (
        ("budget", "parameters", record.teacher_params, record.params) if target.kind == "params"
        else ("macs", "MACs", record.teacher_macs, record.macs)
    )
    assert whole is not None and have is not None
    amount = target.of(whole)
    if amount > whole:
        raise ValueError(
            f"{key}={amount:,} {unit} exceeds the teacher's {whole:,}; give a smaller count or a fraction in (0, 1]"
        )
    return have, amount, unit


def inner_config(config: InherConfig, record: PruneRecord, alone: bool = False) -> InherConfig:
    """The config that inherits the pruned model: the budget as a count of the *original* teacher's
    parameters or MACs (a latency fraction stays, of the teacher's time), no pruning. ``alone``: the
    pruned model may be under the budget already; every layer then stays dense.

    Raises:
        ValueError: the pruned model alone is already under the budget (prune less), unless ``alone``.
    """
    if not config.target.budgeted:
        return unpruned(config)  # a rank or energy rule: nothing to convert
    have, target, unit = budget_standing(config, record)
    latency = config.target.kind == "latency"
    key = {"params": "budget", "macs": "macs", "latency": "latency budget"}[config.target.kind]
    if have < target and not alone:
        left = f"a model that measures {have:,} ns" if latency else f"{have:,} {unit}"
        of = f" ns ({config.latency:g} of the teacher's {record.teacher_latency_ns:,})" if latency else ""
        raise ValueError(
            f"prune={record.ratio:g} leaves {left}, already under the {key} of {target:,}{of}: nothing is "
            "left to factorise; prune less (or use prune-kd)"
        )
    if latency:  # alone: the teacher's whole time, met whatever noisy timing says; inherit's check judges it
        return unpruned(config, latency=1.0) if alone else unpruned(config)
    return unpruned(config, **{key: min(target, have)})  # alone: the pruned model's own size, every layer dense


def teacher_outputs(model: nn.Module, calib: Iterable[Any]) -> list[torch.Tensor]:
    """The teacher's logits on ``calib``, to score students against (:func:`zero_shot_loss`)."""
    return [_logits(model, batch) for batch in calib]


def zero_shot_loss(student: nn.Module, calib: Iterable[Any], targets: Sequence[torch.Tensor]) -> float:
    """KL(teacher || student) of the softmax on ``calib``, averaged over rows; ``targets``:
    :func:`teacher_outputs`."""
    total, rows = 0.0, 0
    for batch, want in zip(calib, targets, strict=True):
        got, want = _logits(student, batch).double(), want.double()
        total += float(nn.functional.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="sum"))
        rows += want[..., 0].numel()
    return total / max(rows, 1) if math.isfinite(total) else math.inf


def _logits(model: nn.Module, batch: Any) -> torch.Tensor:
    with evaluating(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
        out = forward_batch(model, move_batch(batch, device_of(model)))
    try:
        return logits_of(out).detach().float().cpu()
    except TypeError:
        raise ValueError(
            f"InherConfig(prune=...) needs a model that returns logits (its output layer is kept whole while "
            f"the widths before it are pruned); {type(model).__name__} returns {type(out).__name__}, whose "
            "width pruning would change: prune its classification model instead, or leave prune=None"
        ) from None
