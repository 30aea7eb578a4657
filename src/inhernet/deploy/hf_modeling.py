"""A Hugging Face model with low-rank layers, written by inhernet's ``export_hf``: needs transformers only.

The class below is the base architecture imported as ``Base`` with each layer that
``config.inhernet_low_rank`` names (``{"model.layers.0.mlp.up_proj": 24, ...}``) replaced by
:class:`LowRank` of the rank given there: ``up(down(x))``, ``r * (n + m)`` parameters instead of ``n * m``.
Load it with ``AutoModel*.from_pretrained(directory, trust_remote_code=True)``.
"""

import torch
from torch import nn
from transformers import PreTrainedModel as Base  # the base architecture
from transformers.pytorch_utils import Conv1D


class LowRank(nn.Module):
    """``up(down(x))`` in place of ``layer`` (a Linear, Conv1D, Embedding, Conv1d or Conv2d), same inputs
    and outputs: ``down`` has the layer's input side and ``rank`` outputs, ``up`` maps them to its outputs."""

    def __init__(self, layer: nn.Module, rank: int) -> None:
        super().__init__()
        opts = {"device": layer.weight.device, "dtype": layer.weight.dtype}
        bias = getattr(layer, "bias", None) is not None
        if isinstance(layer, nn.Embedding):
            self.down = nn.Embedding(layer.num_embeddings, rank, layer.padding_idx, **opts)
            self.up = nn.Linear(rank, layer.embedding_dim, bias=False, **opts)
        elif isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            self.down = type(layer)(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                                    layer.dilation, padding_mode=layer.padding_mode, bias=False, **opts)
            self.up = type(layer)(rank, layer.out_channels, 1, bias=bias, **opts)
        else:  # nn.Linear's weight is (out, in), transformers' Conv1D's (in, out)
            n, m = layer.weight.shape if isinstance(layer, Conv1D) else layer.weight.shape[::-1]
            self.down = nn.Linear(n, rank, bias=False, **opts)
            self.up = nn.Linear(rank, m, bias=bias, **opts)
        self.layout = type(layer).__name__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @property
    def weight(self) -> torch.Tensor:
        """The replaced layer's dense weight, for model code that reads ``.weight`` (its dtype, say)."""
        if self.layout == "Embedding":
            return self.down.weight @ self.up.weight.T
        dense = self.up.weight.flatten(1) @ self.down.weight.flatten(1)
        return dense.T if self.layout == "Conv1D" else dense.reshape(dense.shape[0], *self.down.weight.shape[1:])


def use_low_rank(model: nn.Module, ranks: dict) -> nn.Module:
    """Replace each layer of ``model`` named in ``ranks`` by a :class:`LowRank` of its rank; returns ``model``."""
    for name, rank in ranks.items():
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, LowRank(getattr(owner, child), rank))
    return model


class InherModel(Base):
    """``Base`` with the layers that ``config.inhernet_low_rank`` names in low rank."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        use_low_rank(self, config.inhernet_low_rank)
