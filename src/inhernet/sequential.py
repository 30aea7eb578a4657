"""Sequential calibration: whitened inheritance block by block along a model's stack of repeated blocks.

Unlike one-pass calibration (:func:`inhernet.calibration.collect_covariances`), each layer is whitened on
inputs that passed the compressed layers before it, in three stages: the layers before the stack (while
a pre-hook captures the first block's inputs), each block in turn (its layers, then the block run again
for the next one), and the layers after the stack. Assumed (true of Hugging Face transformers):
each block gets the previous block's hidden states (first output) and the first block's other
arguments. Key/value caches are dropped (``use_cache=False``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .batches import device_of, forward_batch
from .calibration import InputCovariance, TokenMask, collect_covariances, covariance_hooks, drop_unseen
from .decomposition import Factors, factorize
from .kinds import LayerKind
from .stack import layer_stack

__all__ = ["StackInputs", "capture_stack_inputs", "run_block", "sequential_factors"]

#: one INFO line per layer factorised (as :data:`inhernet.spectra.log`)
log = logging.getLogger("inhernet")

Layers = dict[str, tuple[nn.Module, LayerKind]]
#: what a stage yields: each layer's name and (whitened) factors
Stage = Generator[tuple[str, Factors], None, None]

# Keyword arguments that carry a key/value cache, and the flag that asks for one.
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the stack's first block needs to run."""


@dataclass
class StackInputs:
    """Per calibration batch, what the stack's first block received: hidden states and other arguments;
    ``by_keyword``: the hidden states came as ``hidden_states=``; ``masks``: each batch's attention mask."""

    hidden: list[torch.Tensor]
    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]]
    by_keyword: bool = False
    masks: list[torch.Tensor | None] = field(default_factory=list)


def capture_stack_inputs(
    model: nn.Module, first_block: nn.Module, calib: Iterable[Any], device: torch.device | str,
    mask: TokenMask | None = None,
) -> StackInputs:
    """Run ``model`` on every batch of ``calib`` up to ``first_block`` and record that block's inputs;
    ``mask`` follows each batch's attention mask, for hooks that read it."""
    mask = mask or TokenMask()
    captured = StackInputs([], [], [])

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kwargs = dict(kwargs)
        if args:
            hidden, rest = args[0], tuple(args[1:])
        elif "hidden_states" in kwargs:
            hidden, rest = kwargs.pop("hidden_states"), ()
            captured.by_keyword = True
        else:
            raise TypeError(
                f"{type(module).__name__} was called without positional arguments nor hidden_states=: "
                "sequential calibration cannot tell which argument carries the hidden states"
            )
        kwargs.update({key: None for key in _CACHE_KWARGS if key in kwargs})
        # a KV cache passed positionally (GPT-2's) would grow with every batch
        rest = tuple(None if type(a).__name__.endswith("Cache") else a for a in rest)
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captured.hidden.append(hidden.detach())
        captured.args.append(rest)
        captured.kwargs.append(kwargs)
        raise _StopForward

    with first_block.register_forward_pre_hook(hook, with_kwargs=True):  # the handle removes the hook on exit
        for batch in mask.follow(calib, device):
            captured.masks.append(mask.current)
            with contextlib.suppress(_StopForward):
                forward_batch(model, batch)
    if len(captured.hidden) != len(captured.masks):
        raise ValueError(
            f"the stack's first block ran on {len(captured.hidden)} of {len(captured.masks)} calibration batches; "
            'sequential calibration needs every batch to pass through the stack (use calibration="one-pass")'
        )
    return captured


def run_block(block: nn.Module, inputs: StackInputs, i: int) -> torch.Tensor:
    """``block`` on calibration batch ``i`` of ``inputs``: its output hidden states."""
    if inputs.by_keyword:
        out = block(*inputs.args[i], hidden_states=inputs.hidden[i], **inputs.kwargs[i])
    else:
        out = block(inputs.hidden[i], *inputs.args[i], **inputs.kwargs[i])
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"{type(block).__name__} returned {type(out).__name__}; sequential calibration needs blocks that "
            "return their hidden states (a tensor, or a tuple starting with one)"
        )
    return out


def sequential_factors(
    model: nn.Module, layers: Layers, calib: Iterable[Any], *, damping: float = 1e-4, progress: bool = True,
) -> Iterator[tuple[str, Factors]]:
    """Whitened factors of every layer in ``layers``, stage by stage, yielded as ``(name, factors)``.

    The caller may put a replacement of layer ``name`` into ``model`` before it asks for the next: the
    later stages then run through it. ``calib`` is iterated a few times (pass a list). The model runs
    in eval mode without grad; its mode is restored.

    Raises:
        ValueError: if the model has no stack of repeated blocks (see
            :func:`inhernet.stack.layer_stack`) or the calibration batches do not reach it.
    """
    stack_name, stack = layer_stack(model)
    run = _Run(model, layers, stack_name, stack, damping)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs, early = yield from run.before_stack(calib)
            for i in tqdm(range(len(stack)), desc="calibrating blocks", disable=not progress, leave=False):
                yield from run.through_block(i, inputs)
            del inputs
            yield from run.after_stack(calib, early)
    finally:
        model.train(training)  # the whole model, the blocks put in during the run included


@dataclass
class _Run:
    """One sequential calibration of ``model``'s ``layers``: the three stages of the module docstring."""

    model: nn.Module
    layers: Layers
    stack_name: str
    stack: nn.ModuleList
    damping: float
    mask: TokenMask = field(default_factory=TokenMask)

    def __post_init__(self) -> None:
        self.device = device_of(self.model)
        self.block_of = {name: _block_index(name, self.stack_name) for name in self.layers}
        self.outside = {name: layer for name, layer in self.layers.items() if self.block_of[name] is None}

    def before_stack(self, calib: Iterable[Any]) -> Generator[tuple[str, Factors], None, tuple[StackInputs, set[str]]]:
        """Stage 1; returns the stack's inputs (through the replaced layers) and the layers done."""
        with covariance_hooks(self.outside, self.device, self.mask) as stats:
            inputs = capture_stack_inputs(self.model, self.stack[0], calib, self.device, self.mask)
        early = {name: self.outside[name] for name in stats}
        yield from _stage(self.model, early, stats, self.damping)
        if early and _replaced(self.model, early):
            inputs = capture_stack_inputs(self.model, self.stack[0], calib, self.device)
        return inputs, set(early)

    def through_block(self, i: int, inputs: StackInputs) -> Stage:
        """Stage 2, block ``i``: its layers' factors, then the block (as replaced) run for the next one."""
        todo = {name: self.layers[name] for name in self.layers if self.block_of[name] == i}
        if todo:
            with covariance_hooks(todo, self.device, self.mask) as stats:
                seen = []
                for b in range(len(inputs.hidden)):
                    self.mask.current = inputs.masks[b]
                    seen.append(run_block(self.stack[i], inputs, b))
            yield from _stage(self.model, todo, drop_unseen(stats, todo), self.damping)
            if not _replaced(self.model, todo):  # a block left as it was need not run again
                inputs.hidden = seen
                return
        block = self.stack[i]  # re-read: the block itself may have been replaced
        inputs.hidden = [run_block(block, inputs, b) for b in range(len(inputs.hidden))]

    def after_stack(self, calib: Iterable[Any], early: set[str]) -> Stage:
        """Stage 3: whatever runs after the stack, in one pass of the (replaced) model."""
        late = {name: layer for name, layer in self.outside.items() if name not in early}
        if late:
            yield from _stage(self.model, late, collect_covariances(self.model, late, calib, progress=False), self.damping)


def _block_index(name: str, stack_name: str) -> int | None:
    """The index of the stack block that contains module ``name``, or ``None`` outside the stack."""
    prefix = f"{stack_name}." if stack_name else ""
    if not name.startswith(prefix):
        return None
    head = name[len(prefix):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _stage(model: nn.Module, layers: Layers, stats: dict[str, InputCovariance], damping: float) -> Stage:
    """Each layer's factors (plain SVD where it saw no statistics), one at a time.
    Looked up when it runs: a script may wrap it, e.g. to share factors."""
    for name, (module, kind) in layers.items():
        factors = factorize(kind.matrix(module), stats.pop(name, None), damping)
        log.info("factorised %s", name)
        yield name, factors


def _replaced(model: nn.Module, layers: Layers) -> bool:
    """Whether the caller put a replacement of any of ``layers`` into ``model``."""
    return any(model.get_submodule(name) is not module for name, (module, _) in layers.items())
