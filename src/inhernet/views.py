"""``block.weight``: what a factorised layer shows of the dense weight it replaced, to model code that reads
it for its metadata (``x.to(self.proj.weight.dtype)``) or its values (a tied head's ``embed.weight.T``;
:mod:`inhernet.readers` finds such readers)."""

from __future__ import annotations

from typing import Any

import torch
from torch._C import DisableTorchFunctionSubclass
from torch.utils._pytree import tree_flatten, tree_map_only

__all__ = ["METADATA", "DenseWeight", "torch_function_name"]

#: Tensor attributes and methods that read metadata only (getters and methods alike).
METADATA = frozenset({
    "dtype", "device", "shape", "size", "dim", "ndim", "ndimension", "numel", "nelement", "element_size",
    "is_floating_point", "is_complex", "is_cuda", "is_cpu", "is_meta", "is_mps", "is_xpu", "is_sparse",
    "is_quantized", "is_nested", "layout", "requires_grad", "get_device", "__len__",
})

#: Tensor methods that write into their first argument besides the ``name_`` ones (``w[0] = 1``, ``w += 1``).
_WRITES = frozenset({"__setitem__", "__set__"} | {
    f"__i{op}__" for op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "and", "or",
                            "xor", "lshift", "rshift")
})


def torch_function_name(func: Any) -> str:
    """The attribute a ``__torch_function__`` call stands for (``"dtype"`` for the dtype getter)."""
    name = getattr(func, "__name__", repr(func))
    if name == "__get__":  # a property getter: name it after the property
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class DenseWeight(torch.Tensor):
    """A storage-less tensor with the shape, dtype and device of a factorised block's dense weight.

    Metadata reads (:data:`METADATA`) cost nothing; a use of the values gets the block's differentiable
    :meth:`~inhernet.layers.InherBlock.dense_weight`, with a warning once per block; in-place writes
    raise. As a tensor subclass with ``__torch_function__`` it also keeps PyTorch's fused fast paths
    (``nn.TransformerEncoderLayer`` in eval mode) off, so that the block's own forward runs.
    """

    _block: Any  # the InherBlock (layers sits above this module)

    @staticmethod
    def __new__(cls, block: Any, shape: tuple[int, ...], like: torch.Tensor) -> DenseWeight:
        view = torch.Tensor._make_wrapper_subclass(
            cls, shape, dtype=like.dtype, device=like.device, requires_grad=like.requires_grad
        )
        view._block = block
        return view

    def __repr__(self, *args: Any, **kwargs: Any) -> str:
        owner = f"a factorised {type(self._block).__name__} ({self._block.extra_repr()})"
        return f"DenseWeight(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}, of {owner})"

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = torch_function_name(func)
        if name in METADATA:
            with DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if name in _WRITES or (name.endswith("_") and not name.startswith("__")):  # add_, copy_, zeros_...
            raise RuntimeError(
                f"{name} would write into the dense weight of a factorised layer, which is computed from its "
                "factors on every read; write the factors (block.down, block.up) instead"
            )
        # Made in this frame (no tree map, no comprehension) so that the warning points at the reader's code.
        dense: dict[int, torch.Tensor] = {}
        for w in tree_flatten((args, kwargs))[0]:
            if isinstance(w, DenseWeight):
                dense[id(w)] = w._block._dense_for_reader(name)
        args, kwargs = tree_map_only(DenseWeight, lambda w: dense[id(w)], (args, kwargs))
        return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        raise RuntimeError(f"{func} needs the values of a factorised layer's dense weight, which it lacks")
