"""The InherNet block: an asymmetric low-rank layer whose up-projection is a set of gated experts.

For a teacher layer ``y = W x + b`` the block computes::

    z = A x                                  # down: rank-r features (orthonormal V_r^T at plain init)
    g = softmax(G pool(z) + c)               # gate over h experts, zero at init -> uniform 1/h
    y = sum_i g_i * (B_i z) + b              # up: experts B_i = U_r S_r + D_i, sum_i D_i = 0

The h expert products are fused: the gate-scaled ``[g_1 z, ..., g_h z]``, stacked along the feature
axis, hit one weight ``[B_1 ... B_h]``. With ``experts == 1`` the block is a plain low-rank factorisation.

Linear and embedding blocks gate per token; conv blocks per sample, from the spatial mean of ``z``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .views import DenseWeight

__all__ = ["InherBlock", "InherConv", "InherEmbedding", "InherLinear", "expert_spread"]


class _Replaced:
    """A read-only attribute of the replaced dense layer (``conv.stride``, ``linear.in_features``...),
    which model code reads outside the forward; recorded at construction (:meth:`InherBlock._remember`)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, block: InherBlock | None, owner: type | None = None) -> Any:
        return self if block is None else block._replaced[self.name]

    def __set__(self, block: InherBlock, value: Any) -> None:
        raise AttributeError(
            f"{self.name} of a factorised {type(block).__name__} is read-only: it is the replaced layer's, and "
            "the block's structure is fixed when it is built"
        )


def _exclude_hint(name: str | None) -> str:
    """The ``InherConfig(exclude=[...])`` that keeps layer ``name`` dense, for error messages."""
    return f"InherConfig(exclude=[{name!r}])" if name else "InherConfig(exclude=[<the layer's name>])"


class InherBlock(nn.Module):
    """Shared gate and expert logic; subclasses define ``down``, ``up`` and the layout of ``W``. To code
    outside its forward a block answers as the dense layer it replaced: its hyperparameters
    (:class:`_Replaced`), ``bias`` and ``weight`` (a :class:`~inhernet.views.DenseWeight`)."""

    down: nn.Module
    up: nn.Module
    weight_shape: tuple[int, ...]
    _replaced: dict[str, Any]
    #: whether code outside the forward has used the dense weight (the warning is given once per block)
    _dense_read: bool = False
    #: the block's dotted name in its model, recorded by :func:`inhernet.stack.replace_module` (for messages)
    inhernet_name: str | None = None

    def __init__(self, rank: int, experts: int, *, device=None, dtype=None) -> None:
        super().__init__()
        if rank < 1 or experts < 1:
            raise ValueError(f"rank and experts must be >= 1, got rank={rank}, experts={experts}")
        self.rank, self.experts = rank, experts
        self.gate: nn.Linear | None = None
        if experts > 1:
            self.gate = nn.Linear(rank, experts, device=device, dtype=dtype)
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)

    def _remember(self, **replaced: Any) -> None:
        """Record the replaced layer's hyperparameters (every :class:`_Replaced` attribute of the class)."""
        declared = {n for c in type(self).__mro__ for n, v in vars(c).items() if isinstance(v, _Replaced)}
        if set(replaced) != declared:
            raise TypeError(f"{type(self).__name__} records {sorted(declared)}, got {sorted(replaced)}")
        self._replaced = replaced

    @property
    def weight(self) -> torch.Tensor:
        """The replaced layer's weight: its values computed from the factors when they are used."""
        return DenseWeight(self, self.weight_shape, self.up.weight)

    @property
    def bias(self) -> torch.Tensor | None:
        """The replaced layer's bias, which the block keeps as is in ``up``."""
        return getattr(self.up, "bias", None)

    def _dense_for_reader(self, op: str) -> torch.Tensor:
        """:meth:`dense_weight` for code outside the forward (``op`` uses it), warning once per block."""
        weight = self.dense_weight()
        if not self._dense_read:
            name = self.inhernet_name
            label = repr(name) if name else f"(an {type(self).__name__} that inhernet did not place)"
            warnings.warn(
                f"{op} uses the dense weight of the factorised layer {label}, which is computed from its "
                "factors on every such read: that layer's compute is not reduced (its parameters are). "
                f"Keep it dense with {_exclude_hint(name)} unless the parameters are what you need",
                UserWarning,
                stacklevel=3,  # the code that used the weight, under DenseWeight.__torch_function__
            )
            self._dense_read = True
        return weight

    def gate_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The experts' weights from gate ``logits`` (..., h): ``softmax(logits)``.
        :func:`inhernet.merge_experts` folds by their means."""
        return torch.softmax(logits, dim=-1)

    def _mix(self, z: torch.Tensor, pooled: torch.Tensor, feature_dim: int) -> torch.Tensor:
        """Stack the gate-scaled copies of ``z`` along ``feature_dim`` (the input of the fused ``up``);
        ``pooled`` is the gate's input (``z`` per token, features last, or its spatial mean)."""
        if self.gate is None:
            return z
        g = self.gate_probs(self.gate(pooled))  # (..., h)
        if g.dim() == z.dim():  # per token: features last
            g = g.unsqueeze(feature_dim + 1)  # (..., h, 1)
        else:  # broadcast g over z's remaining (spatial) axes
            g = g.reshape(g.shape + (1,) * (z.dim() - feature_dim))  # (..., h, 1, [1...])
        stacked = g * z.unsqueeze(feature_dim)  # (..., h, r, ...)
        return stacked.flatten(feature_dim, feature_dim + 1)

    @torch.no_grad()
    def inherit_(
        self, down: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None, *, expert_noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> InherBlock:
        """Initialise from factors ``down`` (r x n) and ``up`` (m x r) so that ``up @ down ~ W``: each
        expert is ``up`` plus a deviation ``D_i`` (``sum_i D_i = 0``, ``||D_i|| = expert_noise * ||up||``),
        so that under the zero gate the block computes exactly ``up @ down @ x + bias``."""
        m, r = up.shape
        if r != self.rank or down.shape[0] != self.rank:
            raise ValueError(f"factors of rank {r}/{down.shape[0]} do not fit a block of rank {self.rank}")
        experts = up.unsqueeze(0).expand(self.experts, m, r).clone()
        if self.experts > 1 and expert_noise > 0:
            noise = torch.randn(self.experts, m, r, generator=generator, dtype=torch.float64)
            noise -= noise.mean(dim=0, keepdim=True)  # zero-sum over experts: function preserving
            # One common scale keeps the sum zero; each deviation then has norm ~ expert_noise * ||up||.
            scale = expert_noise * up.double().norm() / noise.flatten(1).norm(dim=1).mean().clamp_min(1e-30)
            experts += (noise * scale).to(experts)
        self._load_down(down)
        self._up_matrix().copy_(experts.permute(1, 0, 2).reshape(m, self.experts * r))
        if bias is not None:
            if self.up.bias is None:
                raise ValueError("the teacher layer has a bias but the block was built without one")
            self.up.bias.copy_(bias)
        if self.gate is not None:
            self.gate.weight.zero_()
            self.gate.bias.zero_()
        return self

    def _load_down(self, down: torch.Tensor) -> None:
        self.down.weight.copy_(down.reshape(self.down.weight.shape))

    def _up_matrix(self) -> torch.Tensor:
        """``up``'s weight viewed as (m, h*r): columns ``i*r:(i+1)*r`` hold expert ``i``."""
        w = self.up.weight
        return w.view(w.shape[0], -1)

    def _down_matrix(self) -> torch.Tensor:
        """``down``'s weight as the (r, n) matrix of ``z = A x``."""
        return self.down.weight.flatten(1)

    def _as_weight(self, matrix: torch.Tensor) -> torch.Tensor:
        """The (m, n) matrix of ``y = W x`` in the replaced layer's weight layout."""
        return matrix.reshape(self.weight_shape)

    def dense_weight(self) -> torch.Tensor:
        """The dense weight ``B A`` this single-expert block computes, in the replaced layer's layout.

        Differentiable: gradients through it reach the factors. What code outside the block's forward
        gets when it uses ``block.weight``'s values.

        Raises:
            AttributeError: the block has several experts, mixed by gates that depend on the input.
        """
        if self.experts > 1:
            name = self.inhernet_name
            raise AttributeError(
                f"{repr(name) if name else type(self).__name__} has {self.experts} experts mixed by gates "
                "that depend on the input, so it has no single dense weight for code that reads its .weight; "
                f"inherit it with InherConfig(experts=1) or keep it dense with {_exclude_hint(name)}"
            )
        return self._as_weight(self._up_matrix() @ self._down_matrix())

    def expert_weights(self) -> torch.Tensor:
        """The experts as an (h, m, r) tensor (a copy)."""
        w = self._up_matrix().detach()
        return w.reshape(w.shape[0], self.experts, self.rank).permute(1, 0, 2).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Token-wise blocks (linear, embedding): the gate reads each token's ``z``."""
        z = self.down(x)
        return self.up(self._mix(z, z, feature_dim=z.dim() - 1))

    def extra_repr(self) -> str:
        return f"rank={self.rank}, experts={self.experts}"


class InherLinear(InherBlock):
    """InherNet block replacing ``nn.Linear`` (and Hugging Face ``Conv1D``): ``y = x W^T + b``."""

    in_features, out_features = _Replaced(), _Replaced()
    #: the replaced layer stores its weight as (in, out): Hugging Face ``Conv1D`` (set by its kind)
    weight_transposed = False

    def __init__(
        self, in_features: int, out_features: int, rank: int, experts: int = 1, bias: bool = True,
        *, device=None, dtype=None,
    ) -> None:
        super().__init__(rank, experts, device=device, dtype=dtype)
        self._remember(in_features=in_features, out_features=out_features)
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(experts * rank, out_features, bias=bias, device=device, dtype=dtype)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        shape = (self.out_features, self.in_features)
        return shape[::-1] if self.weight_transposed else shape

    def _as_weight(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix.T if self.weight_transposed else matrix


class InherEmbedding(InherBlock):
    """InherNet block replacing ``nn.Embedding``, the map ``W = E^T`` from one-hot tokens (n = vocabulary).

    ``down`` is a lookup table of rank-r codes (the orthonormal ``U_r`` rows of ``E = U S V^T``), the
    experts up-project them with ``V_r S_r``: the vocabulary side costs r per token.
    """

    num_embeddings, embedding_dim, padding_idx = _Replaced(), _Replaced(), _Replaced()

    def __init__(
        self, num_embeddings: int, embedding_dim: int, rank: int, experts: int = 1,
        padding_idx: int | None = None, *, device=None, dtype=None,
    ) -> None:
        super().__init__(rank, experts, device=device, dtype=dtype)
        self.down = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx, device=device, dtype=dtype)
        self.up = nn.Linear(experts * rank, embedding_dim, bias=False, device=device, dtype=dtype)
        self._remember(  # the table's padding_idx: a negative one counted from the end, as nn.Embedding does
            num_embeddings=num_embeddings, embedding_dim=embedding_dim, padding_idx=self.down.padding_idx
        )

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.num_embeddings, self.embedding_dim)

    def _down_matrix(self) -> torch.Tensor:
        return self.down.weight.T  # the lookup table (V, r) is z = A x for one-hot x with A = table^T

    def _as_weight(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix.T  # W = E^T

    def _load_down(self, down: torch.Tensor) -> None:
        self.down.weight.copy_(down.T)  # (r, V) -> lookup table (V, r)


class InherConv(InherBlock):
    """InherNet block replacing ``nn.Conv1d`` / ``nn.Conv2d`` (groups = 1): ``down`` has the teacher's
    geometry and r output channels, ``up`` is a 1x1 conv from the h*r gate-scaled channels."""

    in_channels, out_channels, kernel_size, stride = _Replaced(), _Replaced(), _Replaced(), _Replaced()
    padding, dilation, groups, padding_mode = _Replaced(), _Replaced(), _Replaced(), _Replaced()

    def __init__(
        self, conv: type[nn.Conv1d] | type[nn.Conv2d], in_channels: int, out_channels: int,
        kernel_size, rank: int, experts: int = 1, *, stride=1, padding=0, dilation=1,
        padding_mode: str = "zeros", bias: bool = True, device=None, dtype=None,
    ) -> None:
        super().__init__(rank, experts, device=device, dtype=dtype)
        if conv not in (nn.Conv1d, nn.Conv2d):
            raise TypeError(f"InherConv supports nn.Conv1d and nn.Conv2d, got {conv.__name__}")
        self.down = conv(
            in_channels, rank, kernel_size, stride=stride, padding=padding, dilation=dilation,
            padding_mode=padding_mode, bias=False, device=device, dtype=dtype,
        )
        self.up = conv(experts * rank, out_channels, 1, bias=bias, device=device, dtype=dtype)
        self._spatial = 1 if conv is nn.Conv1d else 2
        d = self.down  # the geometry as nn.Conv*d normalised it (tuples), which the teacher layer has too
        self._remember(
            in_channels=in_channels, out_channels=out_channels, kernel_size=d.kernel_size, stride=d.stride,
            padding=d.padding, dilation=d.dilation, groups=1, padding_mode=d.padding_mode,
        )

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == self._spatial + 1
        if unbatched:
            x = x.unsqueeze(0)
        z = self.down(x)
        pooled = z.mean(dim=tuple(range(2, z.dim()))) if self.gate is not None else z
        y = self.up(self._mix(z, pooled, feature_dim=1))
        return y.squeeze(0) if unbatched else y


def expert_spread(block: InherBlock) -> float:
    """Mean distance of the experts from their mean, relative to the mean's norm (0 = identical)."""
    e = block.expert_weights().double()
    mean = e.mean(0)
    return float((e - mean).flatten(1).norm(dim=1).mean() / mean.norm().clamp_min(1e-30))

