"""``compact()``: the deployable form of an inherited model (docs/deploy.md explains its three steps)."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..batches import device_of, evaluating, forward_batch, logits_of, move_batch
from ..calibration import layer_input_shapes, split_example
from ..config import is_int, is_real
from ..costs.prices import RANK_MULTIPLE, round_rank
from ..costs.table import Costs, CostTable, LayerShape
from ..dual import dual_output, is_dual_output
from ..kinds import block_params, kind_of
from ..layers import InherBlock, InherConv, InherEmbedding, InherLinear
from ..stack import replace_module
from .merge import merge_experts

__all__ = ["RANK_MULTIPLE", "TOLERANCE", "compact", "densify", "deployed", "reranked"]

#: the output change (relative to the largest output) that compact() treats as none: float32 layers
#: agree to ~1e-6, and a change of 1e-3 of the largest logit moves no clear decision
TOLERANCE = 1e-3


def deployed(
    model: nn.Module, calib: Iterable[Any] | None = None, *, example: Any = None, costs: Costs | None = None
) -> nn.Module:
    """What a latency is measured on: :func:`compact` of ``model`` (a copy) with blocks, else ``model``."""
    if not any(isinstance(m, InherBlock) for m in model.modules()):
        return model
    return compact(model, calib, example=example, costs=costs)


def compact(
    model: nn.Module, calib: Iterable[Any] | None = None, *, example: Any = None,
    budget: float | int | None = None, rank_multiple: int | None = None, tolerance: float = TOLERANCE,
    costs: Costs | None = None, inplace: bool = False,
) -> nn.Module:
    """The deployable form of an inherited (trained) model: experts folded, blocks at break-even (or no
    faster factorised, within the budget) made dense, ranks rounded where no output changes (docs/deploy.md).

    Args:
        model: a model holding InherNet blocks (from :func:`inhernet.inherit` or :func:`inhernet.load`).
        calib: iterable of input batches: the gates' mean probabilities are measured on it (needed
            when a gate depends on its input); its first batch measures output changes, and is the
            example when ``example`` is not given.
        example: one input batch at the shape to deploy for (batch size, sequence length), at which
            every block's input shape is read and layers are timed.
        budget: the parameter budget: a fraction in (0, 1] of the teacher's parameters or an int
            count. Default: the model's recorded budget, if any.
        rank_multiple: round ranks to a multiple of this where no output changes (``1``: exact ranks).
        tolerance: the relative output change taken as none (``float("inf")``: every rank rounds down).
        costs: the layer timings to decide by (a :class:`~inhernet.costs.Costs`); default a cached
            :class:`~inhernet.costs.CostTable` of this device and thread count.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The compact model: ``inhernet_compact`` records per block ``dense``, ``rank``, ``reason`` (and
        ``rounding``), and the arguments and ``output_change``; its plan marks dense layers ``rank=None``.

    Raises:
        TypeError: ``model`` is not a module, ``costs`` lacks ``dense``/``factorised``.
        ValueError: ``model`` has no InherNet blocks, neither ``example`` nor ``calib`` is given, an
            argument is malformed, or ``calib`` is missing while a gate depends on its input.
    """
    multiple = _check_arguments(model, rank_multiple, tolerance, costs, example, calib)
    check, calib = (example, None) if calib is None else split_example(calib, "compact()")
    example = check if example is None else example
    target = _budget_target(model, budget)
    want = _logits(model, check)
    if not inplace:
        model = copy.deepcopy(model)
    merge_experts(model, calib)
    blocks = _blocks(model)
    ranks = _round_ranks(model, blocks, check, multiple, tolerance, target)
    decisions, optional, params = _measure(model, blocks, example, ranks, costs)
    _spend_budget(decisions, optional, params, target)
    model = _apply(model, blocks, decisions)
    model.inhernet_compact = {"rank_multiple": multiple, "tolerance": tolerance, "budget": target,
                              "output_change": _output_change(model, check, want, tolerance), "layers": decisions}
    _record_plan(model, decisions)
    return model


def _output_change(model: nn.Module, check: Any, want: torch.Tensor, tolerance: float) -> float:
    """The compact ``model``'s relative output change from ``want`` on ``check`` (warned past tolerance)."""
    change = _relative_change(_logits(model, check), want)
    if change > tolerance:
        warnings.warn(
            f"compact() changed the model's outputs by {change:.1e} (largest change / largest output on the "
            f"calibration batch), beyond tolerance={tolerance}: experts folded with input-dependent gates or "
            f"ranks rounded down did it (model.inhernet_compact says which; rank_multiple=1 keeps every rank)",
            UserWarning, stacklevel=3,
        )
    return change


def _check_arguments(model: Any, rank_multiple: Any, tolerance: Any, costs: Any, example: Any, calib: Any) -> int:
    """The rank multiple to round to, once :func:`compact`'s arguments are checked."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    multiple = RANK_MULTIPLE if rank_multiple is None else rank_multiple
    if not is_int(multiple, 1):
        raise ValueError(f"rank_multiple must be an int >= 1 (1: no rounding), got {rank_multiple!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number >= 0 (float('inf'): round every rank down), got {tolerance!r}")
    if costs is not None and not isinstance(costs, Costs):
        raise TypeError(
            f"costs must have dense(shape) and factorised(shape, rank) methods (e.g. a CostTable), "
            f"got {type(costs).__name__}"
        )
    if not _blocks(model):
        raise ValueError("model has no InherNet blocks: compact() takes the result of inherit() or load()")
    if example is None and calib is None:
        raise ValueError(
            "compact() needs an example input to read each block's input shape at (and to time layers at): "
            "pass example=<one batch at the deployed batch size> or calib=<iterable of batches>"
        )
    return multiple


def _round_ranks(
    model: nn.Module, blocks: dict[str, InherBlock], check: Any, multiple: int, tolerance: float, target: int | None
) -> dict[str, dict[str, Any]]:
    """Per block below break-even whose rank is not a multiple of ``multiple``: ``{"rank", "rounding"}``,
    rounded down (output unchanged), up (exact, within budget) or kept (``check``: the calibration batch)."""
    lower = {n: round_rank(b.rank, multiple) for n, b in blocks.items()}
    lower = {n: r for n, r in lower.items() if r != blocks[n].rank and _params(blocks[n]) < _dense_params(blocks[n])}
    if not lower:
        return {}
    lowered = {id(blocks[n]): reranked(blocks[n], r).eval() for n, r in lower.items()}
    changes = layer_input_shapes(  # each call's change, measured in the forward pre-hook (forward: no hook again)
        model, {n: blocks[n] for n in lower}, check,
        lambda block, x: _relative_change(lowered[id(block)].forward(x), block.forward(x)),
    )
    room = None if target is None else target - sum(p.numel() for p in model.parameters())
    rounded: dict[str, dict[str, Any]] = {}
    for name, down in lower.items():
        block, change = blocks[name], max(changes.get(name, [math.inf]))
        up, was = down + multiple, f"from {blocks[name].rank}"
        added = _params(block, up) - _params(block)
        if change <= tolerance:
            rank, how = down, f"rounded down {was}: the layer's output changes by {change:.1e}"
        elif _params(block, up) < _dense_params(block) and (room is None or added <= room):
            rank, how = up, f"rounded up {was} (exact): rounding down changes the layer's output by {change:.1e}"
        else:
            rank, how = block.rank, (f"kept: rounding down changes the layer's output by {change:.1e}, "
                                     f"rank {up} is at break-even or beyond the budget")
        if room is not None:
            room -= _params(block, rank) - _params(block)
        rounded[name] = {"rank": rank, "rounding": how}
    return rounded


def _measure(
    model: nn.Module, blocks: dict[str, InherBlock], example: Any, ranks: dict[str, dict[str, Any]],
    costs: Costs | None,
) -> tuple[dict[str, dict[str, Any]], list[tuple[float, int, str]], int]:
    """Each block's decision before the budget (dense at or above break-even, else measured at its rank
    in ``ranks`` on its first input from ``example``), the blocks that could go dense as ``(seconds saved
    per added parameter, added parameters, name)``, and the model's parameters with the decisions taken so far."""
    inputs = layer_input_shapes(model, blocks, example, lambda _block, x: x.detach())
    params = sum(p.numel() for p in model.parameters())
    decisions: dict[str, dict[str, Any]] = {}
    optional: list[tuple[float, int, str]] = []
    for name, block in blocks.items():
        dense_p = _dense_params(block)
        entry: dict[str, Any] = {"dense": False, "rank": block.rank, "rank_before": block.rank, **ranks.get(name, {})}
        decisions[name] = entry
        rank = entry["rank"]
        params += _params(block, rank) - _params(block)
        if _params(block) >= dense_p:
            entry.update(dense=True, reason=f"rank {block.rank} >= break-even: dense has no more parameters or MACs")
            params += dense_p - _params(block, rank)
            continue
        if name not in inputs:
            entry["reason"] = "did not run on the example input; not measured, kept factorised"
            continue
        costs = CostTable(device_of(model)) if costs is None else costs  # built only when a block needs it
        shape = LayerShape.of_layer(block, inputs[name][0])
        dense_s, fact_s = float(costs.dense(shape)), float(costs.factorised(shape, rank))
        timing = f"dense {dense_s * 1e6:.1f} us, factorised {fact_s * 1e6:.1f} us at rank {rank}"
        entry.update(dense_seconds=dense_s, factorised_seconds=fact_s)
        if fact_s < dense_s:
            entry["reason"] = f"faster factorised ({timing})"
            continue
        added = dense_p - _params(block, rank)
        entry["reason"] = f"dense is no slower ({timing})"
        optional.append(((fact_s - dense_s) / max(added, 1), added, name))
    return decisions, optional, params


def _spend_budget(
    decisions: dict[str, dict[str, Any]], optional: list[tuple[float, int, str]], params: int, target: int | None
) -> None:
    """Turn dense the blocks that are no faster factorised, most seconds saved per added parameter first,
    as long as the parameters stay within ``target`` (all of them without a budget)."""
    for _, added, name in sorted(optional, key=lambda t: (-t[0], t[2])):
        entry = decisions[name]
        if target is not None and params + added > target:
            entry["reason"] += f", but dense exceeds the budget of {target:,} parameters; kept factorised"
            continue
        params += added
        entry["dense"] = True


def _apply(model: nn.Module, blocks: dict[str, InherBlock], decisions: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace each block by its dense layer or its truncation, as decided (a dense one's rank becomes None)."""
    for name, entry in decisions.items():
        if entry["dense"]:
            model = replace_module(model, name, densify(blocks[name]))
            entry["rank"] = None
        elif entry["rank"] != blocks[name].rank:
            model = replace_module(model, name, reranked(blocks[name], entry["rank"]))
    return model


def _skeleton(block: InherBlock) -> nn.Module:
    """A dense layer of the teacher's type and geometry for ``block`` (its values are overwritten)."""
    w = block.up.weight
    opts: dict[str, Any] = {"device": w.device, "dtype": w.dtype}
    bias = block.up.bias is not None
    if isinstance(block, InherEmbedding):
        opts["dtype"] = block.down.weight.dtype  # the table's
        return nn.Embedding(block.num_embeddings, block.embedding_dim, padding_idx=block.padding_idx, **opts)
    if isinstance(block, InherConv):
        d = block.down
        return type(d)(
            block.in_channels, block.out_channels, d.kernel_size, stride=d.stride, padding=d.padding,
            dilation=d.dilation, padding_mode=d.padding_mode, bias=bias, **opts,
        )
    if isinstance(block, InherLinear):
        if block.weight_transposed:  # a Hugging Face Conv1D
            from transformers.pytorch_utils import Conv1D

            return Conv1D(block.out_features, block.in_features).to(**opts)
        return nn.Linear(block.in_features, block.out_features, bias=bias, **opts)
    raise TypeError(f"cannot return a {type(block).__name__} to a dense layer")


@torch.no_grad()
def densify(block: InherBlock) -> nn.Module:
    """The dense layer computing what the single-expert ``block`` computes (``W = B A``, bias kept)."""
    dense = _skeleton(block)
    dense.weight.copy_(block.dense_weight())
    if getattr(dense, "bias", None) is not None:  # a Conv1D always has one: zero where the block has none
        dense.bias.copy_(block.up.bias if block.up.bias is not None else torch.zeros_like(dense.bias))
    dense.train(block.training)
    return dense


@torch.no_grad()
def reranked(block: InherBlock, rank: int) -> InherBlock:
    """A single-expert block of ``rank`` computing ``block``'s ``B A``: below the block's rank its best
    rank-``rank`` approximation (exact when that product's rank is at most ``rank``), above it the same
    product (the factors padded with zeros); ``block`` is not modified."""
    if not 1 <= rank <= min(_matrix_shape(block)):
        raise ValueError(f"rank must be in [1, {min(_matrix_shape(block))}] (the block's full rank), got {rank}")
    if block.experts != 1:
        raise ValueError(f"the block has {block.experts} experts; fold them first (merge_experts)")
    up, down = block._up_matrix().detach().double(), block._down_matrix().detach().double()  # (m, r), (r, n)
    if rank >= block.rank:
        new_up = torch.cat([up, up.new_zeros(up.shape[0], rank - block.rank)], 1)
        new_down = torch.cat([down, down.new_zeros(rank - block.rank, down.shape[1])])
    else:
        q_b, r_b = torch.linalg.qr(up)
        q_a, r_a = torch.linalg.qr(down.T)
        u, s, vh = torch.linalg.svd(r_b @ r_a.T)
        new_up = q_b @ (u[:, :rank] * s[:rank])
        new_down = (q_a @ vh[:rank].T).T
    skeleton = _skeleton(block)
    kind = kind_of(skeleton)
    assert kind is not None
    out = kind.build(skeleton, rank, 1)
    out.inherit_(new_down, new_up, block.up.bias)
    out.source = getattr(block, "source", None)
    out.train(block.training)
    return out


def _blocks(model: nn.Module) -> dict[str, InherBlock]:
    return {name: m for name, m in model.named_modules() if isinstance(m, InherBlock)}


def _matrix_shape(block: InherBlock) -> tuple[int, int]:
    """``(m, n)`` of the block's ``W``."""
    return int(block._up_matrix().shape[0]), int(block._down_matrix().shape[1])


def _params(block: InherBlock, rank: int | None = None) -> int:
    """The parameters of ``block`` as a single expert at ``rank`` (default: its own)."""
    m, n = _matrix_shape(block)
    return block_params(m, n, block.rank if rank is None else rank, 1, block.up.bias is not None)


def _dense_params(block: InherBlock) -> int:
    """The parameters of the dense layer computing what ``block`` computes."""
    m, n = _matrix_shape(block)
    return m * n + (m if block.up.bias is not None else 0)


def _logits(model: nn.Module, batch: Any) -> torch.Tensor:
    """The outputs of ``model`` on ``batch``: its logits, or a dual encoder's two embeddings side by side."""
    with evaluating(model), torch.no_grad():
        out = forward_batch(model, move_batch(batch, device_of(model)))
    if is_dual_output(out):  # both towers: a change in either is an output change
        pair = dual_output(out)
        return torch.cat([pair.image_embeds, pair.text_embeds], -1).detach()
    return logits_of(out).detach()


def _relative_change(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12))


def _budget_target(model: nn.Module, budget: float | int | None) -> int | None:
    """The parameter budget in parameters: ``budget`` (of the teacher's), else the recorded one."""
    plan = getattr(model, "inhernet_plan", None)
    if budget is None and plan is not None:
        return plan.target_params
    if budget is None:
        config = getattr(model, "inhernet_config", None)
        if config is None or config.budget is None or config.budgets:
            return None
        budget = config.budget
    fraction = isinstance(budget, float)
    if not is_real(budget) or not (0 < budget <= 1 if fraction else budget >= 1):
        raise ValueError(f"budget must be a fraction in (0, 1] or a parameter count >= 1, got {budget!r}")
    if not fraction:
        return budget
    teacher = sum(p.numel() for p in model.parameters())
    for block in _blocks(model).values():
        teacher += _dense_params(block) - sum(p.numel() for p in block.parameters())
    return int(budget * teacher)


def _record_plan(model: nn.Module, decisions: dict[str, dict[str, Any]]) -> None:
    """The compact form in the model's plan (if any): one expert, and each layer's rank or dense."""
    plan = getattr(model, "inhernet_plan", None)
    if plan is None:
        return
    rows = []
    for row in plan.layers:
        entry = decisions.get(row.name)
        if entry is None:
            rows.append(row)
        elif entry["dense"]:
            rows.append(replace(row, rank=None, experts=1, params_after=row.params_before,
                                reason=f"returned to dense: {entry['reason']}"))
        else:
            block = model.get_submodule(row.name)
            rows.append(replace(row, rank=entry["rank"], experts=1, params_after=_params(block)))  # type: ignore[arg-type]
    model.inhernet_plan = replace(plan, layers=rows, total_macs=None, total_latency_ns=None)
