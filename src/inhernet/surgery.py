"""Build: the student from a :class:`~inhernet.plan.Plan`: the structure it records replayed (blocks
dropped, channels pruned), then every planned layer an InherNet block initialised from its factors."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .batches import forward_all
from .blockdrop import without_blocks
from .calibration import as_list, peek_example
from .config import InherConfig
from .decomposition import Factors
from .discovery import find_layers
from .kinds import LayerKind
from .plan import Plan
from .pruning import channel_multiple, prune, require_example
from .sequential import sequential_factors
from .spectra import decompose, reiterable
from .stack import replace_module

__all__ = ["assemble", "build", "replace_module", "restructure"]


def build(
    model: nn.Module, plan: Plan, calib: Iterable[Any] | None = None, *, config: InherConfig | None = None,
    progress: bool = True,
) -> nn.Module:
    """The student of ``model`` that ``plan`` describes (e.g. a plan saved as JSON and read back).

    Args:
        model: the teacher; it is not modified.
        plan: its blocks dropped and channels pruned are replayed, then each planned layer inherited.
        calib: model input batches; needed for ``init="whiten"`` and to replay pruning.
        config: build with this config's init, experts and calibration instead of the plan's.
        progress: show a progress bar while calibrating.
    """
    calib = as_list(calib)
    config = config or plan.config
    example = calib[0] if calib else None
    structured = restructure(model, plan, example)
    layers = find_layers(structured, config, example).open
    factors = None
    if config.init != "random" and not (config.init == "whiten" and config.calibration != "one-pass"):
        factors = decompose(structured, layers, config, calib, progress=progress)  # sequential: built stage by stage
    return assemble(structured, plan, layers, calib, config, factors=factors, progress=progress)


def restructure(model: nn.Module, plan: Plan, example: Any) -> nn.Module:
    """A copy of ``model`` changed as ``plan`` records (``model`` itself when it changed nothing)."""
    if plan.drop is not None and plan.drop.dropped:
        model = without_blocks(model, plan.drop.kept)
    if plan.prune is not None and plan.prune.ratio > 0:
        require_example(example)
        model = prune(model, example, plan.prune.ratio, round_to=channel_multiple(plan.config))
    return model


def assemble(
    model: nn.Module, plan: Plan, layers: dict[str, tuple[nn.Module, LayerKind]], calib: Iterable[Any] | None,
    config: InherConfig | None = None, *, factors: dict[str, Factors] | None = None, progress: bool = True,
) -> nn.Module:
    """A copy of ``model`` (restructured) with its planned layers inherited: from one-pass ``factors``
    (:func:`inhernet.spectra.decompose`; ``None`` with ``init="random"``) or stage by stage (sequential
    calibration); ``layers``: its factorisable layers (:attr:`inhernet.discovery.Found.open`)."""
    config = config or plan.config
    example, calib = peek_example(calib)
    unknown = sorted(set(plan.ranks()) - set(layers))
    if unknown:
        raise ValueError(f"the plan factorises layers this model cannot: {', '.join(unknown)}")
    student = copy.deepcopy(model)
    ranks = plan.ranks()
    todo = {name: (student.get_submodule(name), layers[name][1]) for name in ranks}  # the student's own modules
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.init == "whiten" and config.calibration != "one-pass":  # each stage sees the blocks built before
            stages: Iterable[tuple[str, Factors | None]] = sequential_factors(
                student, todo, reiterable(calib), damping=config.damping, progress=progress)
        else:
            stages = ((name, (factors or {}).get(name)) for name in ranks)
        for name, layer_factors in stages:
            module, kind = todo[name]
            block = _build_block(module, kind, ranks[name], layer_factors, config, generator)
            student = replace_module(student, name, block)
    student.inhernet_plan = plan
    if example is None:
        return student
    with torch.random.fork_rng(devices=[]):  # the student must run the example input, as the teacher does
        try:
            forward_all(student, [example])
        except Exception as e:
            try:
                forward_all(model, [example])
            except Exception:
                return student  # the teacher fails on it too: not an input the model accepts, nothing to check
            raise RuntimeError(
                f"the inherited model fails on the first calib batch, which the teacher runs ({type(e).__name__}: "
                f"{e}); keep the layer the traceback names dense with InherConfig(exclude=[...]) and report this"
            ) from e
    return student


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
