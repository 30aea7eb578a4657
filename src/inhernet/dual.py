"""Dual encoders (CLIP-style), which embed ``n`` image-text pairs: reading their outputs (Hugging Face or
open_clip objects, dicts or tuples), and the retrieval metrics over a split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batches import batch_labels, forward_batch

__all__ = ["DUAL_METRICS", "DualOutput", "dual_metrics", "dual_output", "is_dual_output", "pair_embeddings"]

#: The metrics of :func:`dual_metrics`, all computed from one pass over a split.
DUAL_METRICS = ("zero-shot-accuracy", "i2t-recall@1", "i2t-recall@5", "t2i-recall@1", "t2i-recall@5")


@dataclass
class DualOutput:
    """The embeddings of ``n`` image-text pairs; ``logits_per_image`` (n x n) is the model's own when it
    returns them, else ``logit_scale * cos`` (the cosine if no scale)."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    logit_scale: torch.Tensor | None = None
    given_logits: torch.Tensor | None = None

    @property
    def logits_per_image(self) -> torch.Tensor:
        if self.given_logits is not None:
            return self.given_logits.float()
        sims = F.normalize(self.image_embeds.float(), dim=-1) @ F.normalize(self.text_embeds.float(), dim=-1).T
        return sims if self.logit_scale is None else self.logit_scale.float() * sims

    def scale(self) -> torch.Tensor:
        """The logit scale (from the given logits when the model returned no scale; 1 for none at all)."""
        if self.logit_scale is not None:
            return self.logit_scale.float().reshape(())
        if self.given_logits is None:
            return torch.ones((), device=self.image_embeds.device)
        cos = DualOutput(self.image_embeds, self.text_embeds).logits_per_image
        # given = scale * cos exactly: the least-squares scale recovers it
        return (self.given_logits.float() * cos).sum() / (cos * cos).sum().clamp_min(1e-12)

    def pack(self) -> torch.Tensor:
        """One row per pair, ``[image_embeds, text_embeds, scale]``: what a data set can carry per example
        (a teacher's similarities depend on the batch, but its embeddings do not)."""
        scale = self.scale().detach().expand(len(self.image_embeds), 1)
        return torch.cat([self.image_embeds.float(), self.text_embeds.float(), scale.to(self.image_embeds)], dim=1)

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> DualOutput:
        """The inverse of :meth:`pack` (image and text embeddings of one width, one scale for all rows)."""
        if packed.dim() != 2 or packed.shape[1] % 2 != 1:
            raise ValueError(
                f"packed dual-encoder outputs are (n, 2 * embed_dim + 1), got {tuple(packed.shape)}; were the "
                "teacher's logits precomputed from a dual encoder?"
            )
        d = packed.shape[1] // 2
        return cls(packed[:, :d], packed[:, d:-1], packed[0, -1])


def _named(output: Any) -> tuple[Any, Any, Any, Any]:
    """``(image, text, logit_scale, logits_per_image)`` read by name (Hugging Face or open_clip names)."""
    get = output.get if isinstance(output, Mapping) else lambda key: getattr(output, key, None)

    def first(*keys: str) -> Any:
        return next((v for v in map(get, keys) if isinstance(v, torch.Tensor)), None)

    return (
        first("image_embeds", "image_features"), first("text_embeds", "text_features"),
        first("logit_scale"), first("logits_per_image"),
    )


def is_dual_output(output: Any) -> bool:
    """Whether ``output`` carries named image and text embeddings (an object or dict; not a tuple)."""
    if isinstance(output, DualOutput):
        return True
    image, text, _, _ = _named(output)
    return image is not None and text is not None


def dual_output(output: Any) -> DualOutput:
    """The :class:`DualOutput` of a dual encoder's output (``CLIPOutput``-like, dict or tuple)."""
    if isinstance(output, DualOutput):
        return output
    image, text, scale, logits = _named(output)
    if image is not None and text is not None:
        return DualOutput(image, text, scale, logits)
    if (
        isinstance(output, (tuple, list)) and len(output) in (2, 3, 4)
        and all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in output[:2])
    ):
        scale = output[2] if len(output) > 2 and isinstance(output[2], torch.Tensor) else None
        return DualOutput(output[0], output[1], scale if scale is not None and scale.numel() == 1 else None)
    raise TypeError(
        f"cannot read image and text embeddings from a model output of type {type(output).__name__}; a dual "
        "encoder must return an object or dict with image_embeds and text_embeds (Hugging Face CLIPOutput), "
        "or an (image_embeds, text_embeds) tuple"
    )


def pair_embeddings(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A dual encoder's float32 image and text embeddings of a labelled batch, and its labels (flat)."""
    labels = batch_labels(batch)
    if labels is None:
        raise ValueError("dual-encoder metrics need labelled batches: dicts of image-text pairs with 'labels'")
    out = dual_output(forward_batch(model, batch))
    return out.image_embeds.float(), out.text_embeds.float(), labels.reshape(-1)


@torch.no_grad()
def dual_metrics(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Zero-shot accuracy and retrieval recall of ``N`` image-text pairs with class ``labels``.

    Retrieval is category-level: ``i2t-recall@k``, the share of images whose ``k`` most similar distinct
    captions include one of their class, ``t2i-recall@k`` the converse. ``zero-shot-accuracy`` picks the
    class whose mean normalised caption embedding is nearest.
    """
    if not (len(image) == len(text) == len(labels)) or len(labels) == 0:
        raise ValueError(
            f"dual_metrics needs as many images, texts and labels (> 0), got {len(image)}, {len(text)}, "
            f"{len(labels)}"
        )
    image, text = F.normalize(image.double(), dim=-1), F.normalize(text.double(), dim=-1)
    labels = labels.reshape(-1)
    gallery, which = torch.unique(text, dim=0, return_inverse=True)
    gallery_labels = torch.empty(len(gallery), dtype=labels.dtype).scatter_(0, which, labels)
    out: dict[str, float] = {}
    for direction, scores, found in (("i2t", image @ gallery.T, gallery_labels), ("t2i", text @ image.T, labels)):
        for k in (1, 5):
            top = scores.topk(min(k, scores.shape[1]), dim=1).indices
            hit = (found[top] == labels[:, None]).any(dim=1)
            out[f"{direction}-recall@{k}"] = float(hit.double().mean())
    classes = labels.unique()
    prototypes = torch.stack([text[labels == c].mean(0) for c in classes])
    predicted = classes[(image @ F.normalize(prototypes, dim=-1).T).argmax(dim=1)]
    out["zero-shot-accuracy"] = float((predicted == labels).double().mean())
    return {name: out[name] for name in DUAL_METRICS}
