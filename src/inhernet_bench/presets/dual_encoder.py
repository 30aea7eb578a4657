"""``DualEncoder``: a CLIP-style model assembled from an image tower and a text tower.

image -> image tower (pooled features) -> Linear -> L2 norm;  text -> text tower -> mean pool over
tokens -> Linear -> L2 norm; a learnable logit scale. Its forward takes a Hugging Face style batch
(``pixel_values``, ``input_ids``, ``attention_mask``) and returns a :class:`inhernet.dual.DualOutput`,
which the contrastive loss and the retrieval metrics read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from inhernet.dual import DualOutput
from inhernet_bench.presets.minilm import mean_pool

__all__ = ["DualEncoder"]

# CLIP's initial temperature 0.07, and its cap on the learnt scale.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = 100.0


class DualEncoder(nn.Module):
    """Image tower + text tower + linear projections into one ``embed_dim``-wide space.

    ``image_tower(pixel_values)`` must return pooled features ``(B, image_dim)`` (a timm model with
    ``num_classes=0``); ``text_tower(input_ids=..., attention_mask=...)`` token states ``(B, T,
    text_dim)`` as ``.last_hidden_state`` (a Hugging Face ``BertModel``) or a tensor.

    ``frozen_image_norm`` keeps the image tower's batch-norm layers in eval mode when the model trains
    (their running statistics fixed, their affine weights still trained), as when fine-tuning a
    pretrained CNN on small batches of other data: with batch statistics in training and the
    pretrained ones at evaluation, the two would compute different functions.
    """

    def __init__(
        self, image_tower: nn.Module, text_tower: nn.Module, image_dim: int, text_dim: int, embed_dim: int = 256,
        *, frozen_image_norm: bool = False,
    ) -> None:
        super().__init__()
        self.frozen_image_norm = frozen_image_norm
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.image_proj = nn.Linear(image_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def train(self, mode: bool = True) -> DualEncoder:
        super().train(mode)
        if self.frozen_image_norm:
            for module in self.image_tower.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``(B, embed_dim)``."""
        return F.normalize(self.image_proj(self.image_tower(pixel_values)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings ``(B, embed_dim)``.

        Captions repeat within a batch (a few templates per class), so the tower runs once per distinct
        (padded) token row and the result is gathered back: the same output, a fraction of the compute.
        """
        rows = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)
        unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
        ids, mask = unique[:, : input_ids.shape[1]], unique[:, input_ids.shape[1] :]
        out = self.text_tower(input_ids=ids, attention_mask=mask)
        hidden = out if isinstance(out, torch.Tensor) else out.last_hidden_state
        pooled = mean_pool(hidden, mask)
        return F.normalize(self.text_proj(pooled), dim=-1)[inverse]

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> DualOutput:
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return DualOutput(self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask), scale)
