"""Find, on an example input, the layers whose weight is read by code other than their own forward.

Model code sometimes reads a layer's ``.weight`` outside its forward: for its dtype or device (which a
block's :class:`inhernet.views.DenseWeight` answers), or for its values (``nn.MultiheadAttention``, fused
fast paths), which keep the layer dense. :func:`find_weight_readers` runs the example with each
candidate's parameters swapped for a probe tensor that records every use outside its owner's forward.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn
from torch._C import DisableTorchFunctionSubclass
from torch.utils._pytree import tree_flatten

from .batches import device_of, evaluating, forward_batch, hooked, move_batch
from .views import METADATA, torch_function_name

__all__ = ["find_weight_readers"]


class _Probe(torch.Tensor):
    """A parameter's stand-in during the trace: it reports every use outside its owner's forward."""

    _owner: str
    _owner_id: int
    _trace: _Trace

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = torch_function_name(func)
        for a in tree_flatten((args, kwargs))[0]:
            if isinstance(a, _Probe):
                a._trace.record(a, name)
        with DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


class _Trace:
    """Which modules' forwards are running, and what each probe was used for outside its owner's."""

    def __init__(self) -> None:
        self.stack: list[nn.Module] = []
        self.running: Counter[int] = Counter()
        self.values: dict[str, str] = {}  # layer -> first reader that used its weight's values

    def enter(self, module: nn.Module, *_: Any) -> None:
        self.stack.append(module)
        self.running[id(module)] += 1

    def leave(self, module: nn.Module, *_: Any) -> None:
        last = max((i for i, m in enumerate(self.stack) if m is module), default=None)
        if last is not None:
            del self.stack[last]
        self.running[id(module)] -= 1

    def record(self, probe: _Probe, what: str) -> None:
        if self.running[probe._owner_id] > 0:
            return  # the layer's own forward (or something it calls)
        if what in METADATA:
            return  # dtype, device, shape: a factorised layer's weight answers these
        reader = f"{type(self.stack[-1]).__name__}.forward" if self.stack else "code outside any forward"
        self.values.setdefault(probe._owner, f"{reader} ({what})")


def find_weight_readers(model: nn.Module, layers: dict[str, nn.Module], example: Any) -> dict[str, str]:
    """One forward pass on ``example`` (eval mode, no grad; everything restored): per layer whose parameters'
    values are used outside its forward, the first reader (``"Class.forward (op)"``)."""
    trace = _Trace()
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for name, module in layers.items():
            for pname, p in list(module._parameters.items()):
                if p is None:
                    continue
                probe = torch.Tensor._make_subclass(_Probe, p.detach(), p.requires_grad)
                probe._owner, probe._owner_id, probe._trace = name, id(module), trace
                swapped.append((module, pname, p))
                module._parameters[pname] = probe  # bypasses register_parameter's type check on purpose
        handles = [h for m in model.modules() for h in (
            m.register_forward_pre_hook(trace.enter), m.register_forward_hook(trace.leave, always_call=True))]
        with hooked(handles), evaluating(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
            forward_batch(model, move_batch(example, device_of(model)))
    finally:
        for module, pname, p in swapped:
            module._parameters[pname] = p
    return trace.values
