"""What a factorised layer shows of the dense weight it no longer has: its metadata, not its values.

Model code often reads a projection's ``.weight`` outside that projection's forward only to learn its
dtype or device (``hidden.to(self.proj.weight.dtype)``). An InherNet block has no single dense weight,
so :attr:`InherBlock.weight` is a :class:`WeightView`: a tensor without storage that answers exactly
the metadata questions in :data:`METADATA` and raises a clear error on any use of values. Layers whose
weight values are used outside their forward stay dense (:mod:`inhernet.readers` finds them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch._C import DisableTorchFunctionSubclass

__all__ = ["METADATA", "WeightView", "torch_function_name"]

#: Tensor attributes and methods that read metadata only (getters and methods alike).
METADATA = frozenset({
    "dtype", "device", "shape", "size", "dim", "ndim", "ndimension", "numel", "nelement", "element_size",
    "is_floating_point", "is_complex", "is_cuda", "is_cpu", "is_meta", "is_mps", "is_xpu", "is_sparse",
    "is_quantized", "is_nested", "layout", "requires_grad", "get_device", "__len__",
})


def torch_function_name(func: Any) -> str:
    """The attribute a ``__torch_function__`` call stands for: ``"dtype"`` for the dtype getter, else the
    function's name."""
    name = getattr(func, "__name__", repr(func))
    if name == "__get__":  # a property getter: name it after the property
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class WeightView(torch.Tensor):
    """A storage-less tensor with a factorised layer's dense weight's shape, dtype and device.

    Metadata reads (:data:`METADATA`) work; anything that needs values raises ``RuntimeError``. Being a
    tensor subclass with ``__torch_function__``, it also turns PyTorch's fused fast paths (e.g.
    ``nn.TransformerEncoderLayer`` in eval mode) off, so they take the module-by-module path.
    """

    @staticmethod
    def __new__(cls, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, requires_grad: bool,
                owner: str) -> WeightView:
        view = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device, requires_grad=requires_grad)
        view._owner = owner
        return view

    def __repr__(self, *args: Any, **kwargs: Any) -> str:
        return f"WeightView(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}, of {self._owner})"

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        name = torch_function_name(func)
        if name in METADATA:
            with DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        owner = next((a._owner for a in args if isinstance(a, WeightView)), "a factorised layer")
        raise RuntimeError(
            f"{name} needs the values of the dense weight of {owner}, which the factorised block does not "
            "have (only its dtype, device and shape); keep that layer dense with InherConfig(exclude=[...]) "
            "or pass calib= to inherit() so that such readers are found and kept dense"
        )

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        raise RuntimeError(f"{func} needs the values of a factorised layer's dense weight, which it does not have")
