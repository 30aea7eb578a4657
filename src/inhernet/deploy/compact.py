"""``compact()``: the deployable form of an inherited model.

Three steps, each recorded in the model's books (``inhernet_plan``, ``inhernet_config`` and
``inhernet_compact``, which :func:`inhernet.save` writes and :func:`inhernet.load` reads back):

1. **Experts folded** into one up-projection per block, as :func:`merge_experts` does (exact for a
   gate that ignores its input; otherwise the mean gate over ``calib`` replaces it).
2. **Blocks returned to dense layers** (``nn.Linear``, ``nn.Conv1d/2d``, ``nn.Embedding`` or Hugging
   Face ``Conv1D`` with ``W = B A`` and the bias kept, so exactly the function the block computed)
   wherever the factorised form does not pay:

   * always, when the block's rank is at or above its break-even rank: the dense layer then has no
     more parameters (and no more MACs) than the block. A full-rank inherited model therefore
     compacts into the teacher's architecture, reproducing it (never slower by design);
   * when the factorised form's **measured** time on the example input's shape at that layer is at
     least the dense layer's (a :class:`~inhernet.deploy.costs.CostTable`, timed once per shape on
     this device and cached), as long as the model's parameters stay within its budget. The budget
     is ``budget=`` when given, else the one the model records (its plan's target, or its config's
     ``budget`` for a loaded model), else there is none (a ``rank=``, ``energy=`` or ``macs=`` model:
     measured time replaces a MAC budget here). When the budget does not cover every such block,
     those that save the most seconds per added parameter go first. Folding the experts frees the
     parameters of ``h - 1`` up-projections and the gates, which is what usually pays for them.

3. **Ranks rounded down** to a multiple of ``rank_multiple`` (default :data:`RANK_MULTIPLE`) in the
   blocks that stay factorised: ``B A`` is re-truncated to the lower rank by the SVD of its small
   factors (``B = Q_B R_B``, ``A^T = Q_A R_A``, SVD of ``R_B R_A^T``), the best approximation of the
   block's product at that rank in the Frobenius norm, exact when the product's rank does not exceed
   it. A rank below the multiple is kept. Rounding only lowers parameters, so it never breaks the
   budget. The rounding decision is taken before the dense/factorised one, which compares the
   dense layer with the block at its rounded rank.

Rank multiple: measured under load on a shared 2-core x86 CPU, torch eager, one thread, batch 1
(Linear 384->384 and 384->1536 on 64 tokens, Conv2d 32->64 k3 on 28x28; medians of interleaved
repetitions); see the comment on :data:`inhernet.budget.RANK_MULTIPLE` for the numbers and the choice.
A latency budget (``InherConfig(latency=...)``) allocates ranks in steps of the same multiple, so the
default rounding leaves its ranks unchanged and the compact model spends the budget the plan predicts.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..calibration import layer_input_shapes, split_example
from ..costs.prices import RANK_MULTIPLE, round_rank
from ..costs.table import Costs, CostTable, LayerShape
from ..kinds import block_params, kind_of
from ..layers import InherBlock, InherConv, InherEmbedding, InherLinear
from ..stack import replace_module
from .merge import merge_experts

__all__ = ["RANK_MULTIPLE", "compact", "densify", "deployed", "truncate"]


def deployed(
    model: nn.Module, calib: Iterable[Any] | None = None, *, example: Any = None, costs: Costs | None = None
) -> nn.Module:
    """What is deployed of ``model``: :func:`compact` of it (a copy) when it holds InherNet blocks, else
    ``model`` itself (a plan that kept every layer dense, or a baseline): what a latency is measured on."""
    if not any(isinstance(m, InherBlock) for m in model.modules()):
        return model
    return compact(model, calib, example=example, costs=costs)


def compact(
    model: nn.Module,
    calib: Iterable[Any] | None = None,
    *,
    example: Any = None,
    budget: float | int | None = None,
    rank_multiple: int | None = None,
    costs: Costs | None = None,
    inplace: bool = False,
) -> nn.Module:
    """The deployable form of an inherited (trained) model; see the module documentation.

    Args:
        model: a model holding InherNet blocks (the result of :func:`inhernet.inherit` or
            :func:`inhernet.load`, possibly fine-tuned).
        calib: iterable of input batches: the gates' mean probabilities are measured on it (needed
            when a gate depends on its input) and its first batch is the example when ``example`` is
            not given.
        example: one input batch (tensor, ``(inputs, labels)`` or dict) at the shape to deploy for
            (batch size, sequence length): every block's input shape is read from one forward pass
            on it, and layers are timed at that shape.
        budget: the parameter budget: a fraction in (0, 1] of the teacher's parameters or an int
            count. Default: the model's recorded budget, if any. ``1.0`` lets every block that is
            not faster factorised return to dense.
        rank_multiple: round factorised ranks down to a multiple of this (``1``: no rounding;
            default :data:`RANK_MULTIPLE`).
        costs: the cost table to decide by (anything with ``dense(shape)`` and
            ``factorised(shape, rank)`` in seconds, see :class:`~inhernet.deploy.costs.Costs`);
            default a :class:`~inhernet.deploy.costs.CostTable` on the model's device at the current
            thread count, cached on disk. Only consulted for blocks below their break-even rank.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The compact model: single-expert blocks at rounded ranks and dense layers. Its
        ``inhernet_compact`` records per block ``{"dense": bool, "rank": int | None, "reason": str}``,
        the rank multiple and the budget; its plan (if any) says ``experts=1`` and, for every layer
        returned to dense, ``rank=None`` and a reason beginning ``"returned to dense"``.

    Raises:
        TypeError: ``model`` is not a module, ``costs`` lacks ``dense``/``factorised``.
        ValueError: ``model`` has no InherNet blocks, neither ``example`` nor ``calib`` is given,
            ``rank_multiple`` or ``budget`` is malformed, or ``calib`` is missing while a gate
            depends on its input.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    multiple = RANK_MULTIPLE if rank_multiple is None else rank_multiple
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"rank_multiple must be an int >= 1 (1: no rounding), got {rank_multiple!r}")
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
    if example is None:
        example, calib = split_example(calib, "compact()")
    target = _budget_target(model, budget)
    if not inplace:
        model = copy.deepcopy(model)
    merge_experts(model, calib)
    blocks = _blocks(model)
    inputs = _block_inputs(model, blocks, example)

    params = sum(p.numel() for p in model.parameters())
    decisions: dict[str, dict[str, Any]] = {}
    optional: list[tuple[float, int, str]] = []  # (seconds saved per added parameter, added params, name)
    for name, block in blocks.items():
        m, n = _matrix_shape(block)
        has_bias = block.up.bias is not None
        dense_p = m * n + (m if has_bias else 0)
        rank = round_rank(block.rank, multiple)
        params -= block_params(m, n, block.rank, 1, has_bias) - block_params(m, n, rank, 1, has_bias)
        entry: dict[str, Any] = {"dense": False, "rank": rank, "rank_before": block.rank}
        decisions[name] = entry
        if block_params(m, n, block.rank, 1, has_bias) >= dense_p:
            entry.update(dense=True, reason=f"rank {block.rank} >= break-even: dense has no more parameters or MACs")
            params += dense_p - block_params(m, n, rank, 1, has_bias)
            continue
        if name not in inputs:
            entry["reason"] = "did not run on the example input; not measured, kept factorised"
            continue
        shape = LayerShape.of_block(block, inputs[name])
        if costs is None:
            costs = CostTable(next(model.parameters()).device)
        dense_s, fact_s = float(costs.dense(shape)), float(costs.factorised(shape, rank))
        timing = f"dense {dense_s * 1e6:.1f} us, factorised {fact_s * 1e6:.1f} us at rank {rank}"
        entry.update(dense_seconds=dense_s, factorised_seconds=fact_s)
        if fact_s < dense_s:
            entry["reason"] = f"faster factorised ({timing})"
            continue
        added = dense_p - block_params(m, n, rank, 1, has_bias)
        entry["reason"] = f"dense is no slower ({timing})"
        optional.append(((fact_s - dense_s) / max(added, 1), added, name))
    for _, added, name in sorted(optional, key=lambda t: (-t[0], t[2])):
        entry = decisions[name]
        if target is not None and params + added > target:
            entry["reason"] += f", but dense exceeds the budget of {target:,} parameters; kept factorised"
            continue
        params += added
        entry["dense"] = True
    for name, entry in decisions.items():
        if entry["dense"]:
            model = replace_module(model, name, densify(blocks[name]))
            entry["rank"] = None
        elif entry["rank"] < blocks[name].rank:
            model = replace_module(model, name, truncate(blocks[name], entry["rank"]))
    _record(model, decisions, multiple, target)
    return model


# -- the two moves ---------------------------------------------------------------------------------
def _factors(block: InherBlock) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` of a single-expert block as (m, r) and (r, n) float64 matrices, ``W = B A``."""
    if block.experts != 1:
        raise ValueError(f"the block has {block.experts} experts; fold them first (merge_experts)")
    w = block.down.weight.detach().double()
    down = w.T if isinstance(block, InherEmbedding) else w.flatten(1)
    return block._up_matrix().detach().double(), down


def _skeleton(block: InherBlock) -> nn.Module:
    """A dense layer of the teacher's type and geometry for ``block`` (its values are overwritten)."""
    w = block.up.weight
    opts: dict[str, Any] = {"device": w.device, "dtype": w.dtype}
    bias = block.up.bias is not None
    if isinstance(block, InherEmbedding):
        return nn.Embedding(
            block.num_embeddings, block.embedding_dim, padding_idx=block.padding_idx,
            device=w.device, dtype=block.down.weight.dtype,
        )
    if isinstance(block, InherConv):
        d = block.down
        return type(d)(
            block.in_channels, block.out_channels, d.kernel_size, stride=d.stride, padding=d.padding,
            dilation=d.dilation, padding_mode=d.padding_mode, bias=bias, **opts,
        )
    if isinstance(block, InherLinear):
        if (getattr(block, "source", None) or {}).get("kind") == "hf_conv1d":
            from transformers.pytorch_utils import Conv1D

            return Conv1D(block.out_features, block.in_features).to(**opts)
        return nn.Linear(block.in_features, block.out_features, bias=bias, **opts)
    raise TypeError(f"cannot return a {type(block).__name__} to a dense layer")


@torch.no_grad()
def densify(block: InherBlock) -> nn.Module:
    """The dense layer computing what the single-expert ``block`` computes (``W = B A``, bias kept)."""
    up, down = _factors(block)
    dense = _skeleton(block)
    kind = kind_of(dense)
    assert kind is not None
    kind.matrix(dense).copy_(up @ down)
    bias = kind.bias(dense)
    if bias is not None:
        if block.up.bias is None:
            bias.zero_()
        else:
            bias.copy_(block.up.bias)
    dense.train(block.training)
    return dense


@torch.no_grad()
def truncate(block: InherBlock, rank: int) -> InherBlock:
    """A single-expert block of ``rank`` holding the best rank-``rank`` approximation of ``block``'s
    ``B A`` (exact when that product's rank is at most ``rank``); ``block`` is not modified."""
    if not 1 <= rank <= block.rank:
        raise ValueError(f"rank must be in [1, {block.rank}] (the block's rank), got {rank}")
    up, down = _factors(block)
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


# -- helpers ---------------------------------------------------------------------------------------
def _blocks(model: nn.Module) -> dict[str, InherBlock]:
    return {name: m for name, m in model.named_modules() if isinstance(m, InherBlock)}


def _matrix_shape(block: InherBlock) -> tuple[int, int]:
    up, down = block.up.weight, block.down.weight
    n = down.shape[0] if isinstance(block, InherEmbedding) else down[0].numel()
    return int(up.shape[0]), int(n)


def _block_inputs(model: nn.Module, blocks: dict[str, InherBlock], example: Any) -> dict[str, torch.Tensor]:
    """The input each block receives first in one forward pass on ``example`` (eval mode, no grad)."""
    calls = layer_input_shapes(model, blocks, example, lambda _block, x: x.detach())
    return {name: inputs[0] for name, inputs in calls.items()}


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
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ValueError(f"budget must be a fraction in (0, 1] or a parameter count, got {budget!r}")
    teacher = sum(p.numel() for p in model.parameters())
    for block in _blocks(model).values():
        m, n = _matrix_shape(block)
        teacher += m * n - sum(p.numel() for p in block.parameters()) + (m if block.up.bias is not None else 0)
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ValueError(f"budget must be a fraction in (0, 1] or a parameter count, got {budget!r}")
        return int(budget * teacher)
    if budget < 1:
        raise ValueError(f"budget must be a fraction in (0, 1] or a parameter count >= 1, got {budget!r}")
    return budget


def _record(model: nn.Module, decisions: dict[str, dict[str, Any]], multiple: int, target: int | None) -> None:
    """The compact form in the model's books: ``inhernet_compact``, and the plan's rows."""
    model.inhernet_compact = {"rank_multiple": multiple, "budget": target, "layers": decisions}
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
            m, n = _matrix_shape(model.get_submodule(row.name))  # type: ignore[arg-type]
            has_bias = model.get_submodule(row.name).up.bias is not None
            rows.append(replace(row, rank=entry["rank"], experts=1,
                                params_after=block_params(m, n, entry["rank"], 1, has_bias)))
    model.inhernet_plan = replace(plan, layers=rows, total_macs=None, total_latency_ns=None)
