"""Layer kinds: how each supported teacher layer is read as a matrix, calibrated and rebuilt.

One ``LayerKind`` per supported module type, registered with :func:`register_kind` and found along the
module's MRO: a new layer type is a new registration. Every kind reads its layer as ``y = W x + b``
with ``W`` of shape (m, n): a conv's kernel flattened to (C_out, C_in * prod(kernel)), an embedding as
``E^T`` over one-hot tokens, Hugging Face ``Conv1D`` (``x @ W + b``) transposed.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import InherBlock, InherConv, InherEmbedding, InherLinear

__all__ = ["LayerKind", "kind_of", "register_kind"]


class LayerKind:
    """How one module type is factorised. Subclasses override what differs."""

    name: str = "linear"

    def dense_reason(self, module: nn.Module) -> str | None:
        """Why this particular module must stay dense, or ``None`` when it can be factorised."""
        return None

    def weight(self, module: nn.Module) -> torch.Tensor:
        return module.weight  # type: ignore[return-value]

    def matrix(self, module: nn.Module) -> torch.Tensor:
        """The weight as the (m, n) matrix of ``y = W x``."""
        return self.weight(module)

    def bias(self, module: nn.Module) -> torch.Tensor | None:
        return getattr(module, "bias", None)

    def shape(self, module: nn.Module) -> tuple[int, int]:
        m, n = self.matrix(module).shape
        return int(m), int(n)

    def describe(self, module: nn.Module) -> str:
        """Human-readable shape for the plan table."""
        m, n = self.shape(module)
        return f"{n}->{m}"

    def build(self, module: nn.Module, rank: int, experts: int) -> InherBlock:
        """An uninitialised block of this rank with the module's device and dtype."""
        raise NotImplementedError

    def batched(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's input with its leading batch axis (adds one to an unbatched input)."""
        return x

    def input_rows(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's (batched) input as rows of the (N, n) matrix X whose covariance whitening uses."""
        return x.reshape(-1, x.shape[-1])

    def spec(self, module: nn.Module) -> dict[str, Any]:
        """What identifies the teacher layer in a saved file (checked against the base on load)."""
        return {"kind": self.name, "shape": list(self.shape(module)), "bias": self.bias(module) is not None}

    def mac_rates(self, module: nn.Module) -> tuple[int, int]:
        """MACs per output position: of the dense layer (``m*n``), and of a block's down-projection per rank."""
        m, n = self.shape(module)
        return m * n, n

    def positions(self, module: nn.Module, output: torch.Tensor) -> tuple[int, int]:
        """Output positions of one call (rows of ``y``), and the positions at which a block's gate runs."""
        rows = output.numel() // self.shape(module)[0]
        return rows, rows


class LinearKind(LayerKind):
    name = "linear"

    def build(self, module: nn.Module, rank: int, experts: int) -> InherLinear:
        m, n = self.shape(module)
        w, bias = module.weight, self.bias(module) is not None
        return InherLinear(n, m, rank, experts, bias=bias, device=w.device, dtype=w.dtype)


class HFConv1DKind(LinearKind):
    """Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2): ``y = x @ W + b``, W is (in, out)."""

    name = "hf_conv1d"

    def matrix(self, module: nn.Module) -> torch.Tensor:
        return module.weight.T

    def build(self, module: nn.Module, rank: int, experts: int) -> InherLinear:
        block = super().build(module, rank, experts)
        block.weight_transposed = True  # Conv1D stores its weight as (in, out)
        return block


class ConvKind(LayerKind):
    def __init__(self, conv: type[nn.Conv1d] | type[nn.Conv2d]) -> None:
        self.conv = conv
        self.name = conv.__name__.lower()
        self.spatial = 1 if conv is nn.Conv1d else 2

    def dense_reason(self, module: nn.Conv2d) -> str | None:
        if module.groups != 1:
            kind = "depthwise" if module.groups == module.in_channels else "grouped"
            return f"{kind} conv (groups={module.groups}): already factorised per group, kept dense"
        return None

    def matrix(self, module: nn.Module) -> torch.Tensor:
        return module.weight.flatten(1)

    def describe(self, module: nn.Conv2d) -> str:
        k = "x".join(str(s) for s in module.kernel_size)
        return f"{module.in_channels}->{module.out_channels} k{k}"

    def build(self, module: nn.Conv2d, rank: int, experts: int) -> InherBlock:
        w = module.weight
        return InherConv(
            self.conv, module.in_channels, module.out_channels, module.kernel_size, rank, experts,
            stride=module.stride, padding=module.padding, dilation=module.dilation,
            padding_mode=module.padding_mode, bias=module.bias is not None, device=w.device, dtype=w.dtype,
        )

    def batched(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0) if x.dim() == self.spatial + 1 else x

    def input_rows(self, module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
        if self.spatial == 1:  # unfold a 1-d conv as a 2-d one of height 1
            x = x.unsqueeze(2)
            kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
        patches = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (N, n, L)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])

    def positions(self, module: nn.Module, output: torch.Tensor) -> tuple[int, int]:
        """Samples x output pixels; the gate runs once per sample (on the spatial mean)."""
        samples = output.shape[0] if output.dim() == self.spatial + 2 else 1
        return output.numel() // self.shape(module)[0], samples

    def spec(self, module: nn.Conv2d) -> dict[str, Any]:
        kernel, stride = list(module.kernel_size), list(module.stride)
        return {**super().spec(module), "kernel_size": kernel, "stride": stride}


class EmbeddingKind(LayerKind):
    """``nn.Embedding`` as the map from one-hot tokens (``W = E^T``, n = vocabulary), whose input covariance
    is diagonal: calibration counts tokens."""

    name = "embedding"

    def dense_reason(self, module: nn.Embedding) -> str | None:
        if module.max_norm is not None:
            return "embedding with max_norm renormalises rows at lookup; kept dense"
        if module.sparse:
            return "sparse-gradient embedding; kept dense"
        return None

    def matrix(self, module: nn.Module) -> torch.Tensor:
        return module.weight.T

    def bias(self, module: nn.Module) -> torch.Tensor | None:
        return None

    def describe(self, module: nn.Embedding) -> str:
        return f"vocab {module.num_embeddings} x {module.embedding_dim}"

    def build(self, module: nn.Embedding, rank: int, experts: int) -> InherBlock:
        w = module.weight
        return InherEmbedding(
            module.num_embeddings, module.embedding_dim, rank, experts, padding_idx=module.padding_idx,
            device=w.device, dtype=w.dtype,
        )

    def mac_rates(self, module: nn.Module) -> tuple[int, int]:
        """A lookup, dense or as the block's down table, multiplies nothing."""
        return 0, 0

    def input_rows(self, module: nn.Embedding, x: torch.Tensor) -> torch.Tensor:
        """Token counts (a vector of length n): the diagonal of X X^T for one-hot X."""
        return torch.bincount(x.reshape(-1), minlength=module.num_embeddings)


_REGISTRY: dict[type, LayerKind] = {}


def register_kind(module_type: type, kind: LayerKind) -> None:
    """Register ``kind`` as the handler of ``module_type`` (and of its subclasses)."""
    _REGISTRY[module_type] = kind


register_kind(nn.Linear, LinearKind())
register_kind(nn.Conv1d, ConvKind(nn.Conv1d))
register_kind(nn.Conv2d, ConvKind(nn.Conv2d))
register_kind(nn.Embedding, EmbeddingKind())


def _register_lazy_kinds() -> None:
    # Hugging Face is optional and slow to import: register Conv1D once the user's model imported it.
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    if conv1d is not None and conv1d not in _REGISTRY:
        register_kind(conv1d, HFConv1DKind())


def kind_of(module: nn.Module) -> LayerKind | None:
    """The registered kind of ``module`` (nearest class in its MRO), or ``None`` if unsupported."""
    _register_lazy_kinds()
    return next((_REGISTRY[cls] for cls in type(module).__mro__ if cls in _REGISTRY), None)


def forward_override(module: nn.Module) -> str | None:
    """Why ``module`` stays dense if its class overrides the supported base class's forward (a Bart
    positional embedding's offset, a timm "same"-padded conv): a block reproduces only the base forward."""
    cls = next((cls for cls in type(module).__mro__ if cls in _REGISTRY), None)
    if cls is None or type(module).forward is cls.forward:
        return None
    return f"{type(module).__name__} overrides {cls.__name__}.forward, which a block would not reproduce; kept dense"


def dense_params(module: nn.Module) -> int:
    """Parameters the module owns directly (not through children)."""
    return sum(p.numel() for p in module.parameters(recurse=False))


def block_params(m: int, n: int, rank: int, experts: int, bias: bool) -> int:
    """Parameters of an InherNet block: r*n + h*r*m + (h*r + h if h > 1) + (m if bias)."""
    gate = experts * rank + experts if experts > 1 else 0
    return rank * n + experts * rank * m + gate + (m if bias else 0)
