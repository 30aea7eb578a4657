"""The ``fashion-dual`` preset: a CLIP-style dual encoder on Fashion-MNIST images and written captions.

Teacher: EfficientNet-Lite0 (ImageNet weights, pooled 1280-d features) as the image tower and
all-MiniLM-L6-v2 (mean pooled) as the text tower, with linear projections into a shared 256-d space.
It is aligned contrastively on Fashion-MNIST training images paired with captions written from the
class names with varied templates ("a grey picture of a sneaker."), until its validation zero-shot
accuracy stops improving (``inhernet-bench teacher --preset fashion-dual``; :mod:`inhernet_bench.teachers`).
Alignment trains the projections, the logit scale and the last block and head of the image tower; the
text tower keeps its pretrained weights, and the image tower its ImageNet batch-norm statistics.

Metrics on the first 1,000 test images, each paired with one caption: zero-shot accuracy (nearest
class text embedding) and image->text / text->image recall@1 and @5 (see :func:`inhernet.dual.dual_metrics`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from inhernet_bench.presets.dual_encoder import DualEncoder
from inhernet_bench.presets.fashion import (
    FASHION_CLASSES,
    effnet_input,
    load_effnet_lite0_imagenet,
    read_fashion_mnist,
)
from inhernet_bench.presets.minilm import load_minilm, mean_pool, minilm_path
from inhernet_bench.presets.teacher_cache import (
    FIT_THREADS,
    TeacherSpec,
    load_teacher,
    stratified_split,
    teacher_cache_dir,
)

__all__ = [
    "CAPTION_NAMES",
    "TEMPLATES",
    "FashionPairs",
    "captions",
    "fashion_dual_calib",
    "fashion_dual_loaders",
    "fashion_dual_student",
    "fashion_dual_validation",
    "load_fashion_dual_teacher",
    "teacher_spec",
]

# What each FASHION_CLASSES entry is called in a caption, with its article.
CAPTION_NAMES = (
    "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat", "a sandal", "a shirt", "a sneaker",
    "a bag", "an ankle boot",
)
TEMPLATES = (
    "a photo of {}.",
    "a grey picture of {}.",
    "a low-resolution photo of {}.",
    "a black and white image of {}.",
    "a product photo of {}.",
    "a small picture of {}, centred.",
    "{} on a dark background.",
    "a fashion item: {}.",
)
IMAGE_SIZE = 32
EMBED_DIM = 256
TEST_SIZE = 1000
EVAL_BATCH_SIZE = 500
PRESET = "fashion-dual"
#: how the converged teacher is aligned (:mod:`inhernet_bench.teachers`); part of its cache's key
TEACHER_RECIPE: dict[str, Any] = {
    "base": "EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2 (mean pool), linear projections to 256-d",
    "data": "Fashion-MNIST train pairs, one caption of 8 templates each", "image_size": IMAGE_SIZE,
    "trained_blocks": 1, "train_limit": None, "val_examples": 2000, "split_seed": 0, "test_limit": None,
    "lr": 1e-3, "batch_size": 256, "warmup_steps": 50, "weight_decay": 0.01, "eval_every": 500, "patience": 5,
    "max_steps": 30000, "seed": 0, "threads": FIT_THREADS,
}
_TEMPLATE_SEEDS = {"train": 11, "test": 12}


def captions() -> list[str]:
    """Every caption: caption ``label * len(TEMPLATES) + t`` is template ``t`` of class ``label``."""
    assert len(CAPTION_NAMES) == len(FASHION_CLASSES)
    return [template.format(name) for name in CAPTION_NAMES for template in TEMPLATES]


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


class FashionPairs(Dataset):
    """Fashion-MNIST images, each paired with one caption of its class (template drawn per split, seeded).

    Examples are dicts: ``pixel_values`` (3, 32, 32) for EfficientNet, ``input_ids`` and
    ``attention_mask`` of the caption (padded to the longest caption), ``labels``.
    """

    def __init__(self, split: Literal["train", "test"], limit: int | None = None) -> None:
        images, labels = read_fashion_mnist(split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images, self.labels = images, labels
        g = torch.Generator().manual_seed(_TEMPLATE_SEEDS[split])
        self.caption = labels * len(TEMPLATES) + torch.randint(len(TEMPLATES), (len(labels),), generator=g)
        tokens = _tokenizer()(captions(), padding=True, return_tensors="pt")
        self.input_ids, self.attention_mask = tokens["input_ids"], tokens["attention_mask"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c = self.caption[index]
        return {
            "pixel_values": effnet_input(self.images[index : index + 1], IMAGE_SIZE)[0],
            "input_ids": self.input_ids[c],
            "attention_mask": self.attention_mask[c],
            "labels": self.labels[index],
        }


def fashion_dual_loaders(
    batch_size: int = 64, eval_batch_size: int = EVAL_BATCH_SIZE, test_limit: int | None = TEST_SIZE
) -> tuple[DataLoader, DataLoader]:
    """``(train, test)``: all 60,000 training pairs (shuffled) and the first ``test_limit`` test pairs
    (``None``: all 10,000; ``bench --full-test``)."""
    train = DataLoader(FashionPairs("train"), batch_size=batch_size, shuffle=True)
    test = DataLoader(FashionPairs("test", limit=test_limit), batch_size=eval_batch_size)
    return train, test


def fashion_dual_validation() -> list[int]:
    """The converged teacher's validation pairs (:data:`TEACHER_RECIPE`'s split): indices into
    :func:`fashion_dual_loaders`' training pairs, held out of the teacher's training; the bench's validation split."""
    r = TEACHER_RECIPE
    return stratified_split(read_fashion_mnist("train")[1][: r["train_limit"]], r["val_examples"], r["split_seed"])[1]


def fashion_dual_calib(n: int) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` training pairs, without labels, in batches of at most 250."""
    pairs = DataLoader(FashionPairs("train", limit=n), batch_size=min(n, 250))
    return [{k: v for k, v in batch.items() if k != "labels"} for batch in pairs]


# -- the teacher -------------------------------------------------------------------------------------
def teacher_dir() -> Path:
    """Where the converged teacher of the current recipe is cached."""
    return teacher_cache_dir(teacher_spec().name)


def _text_tower(pretrained: bool) -> nn.Module:
    """all-MiniLM-L6-v2 without its pooler (the sentence embedding is a mean pool, not the pooler)."""
    if pretrained:
        model, _ = load_minilm()
    else:
        from transformers import AutoConfig, BertModel

        model = BertModel(AutoConfig.from_pretrained(minilm_path(), local_files_only=True), add_pooling_layer=False)
    model.pooler = None
    return model


def build_teacher(pretrained: bool = True) -> DualEncoder:
    """The teacher's architecture; with ``pretrained`` the towers hold their ImageNet / MiniLM weights."""
    if pretrained:
        image = load_effnet_lite0_imagenet(num_classes=0)
    else:
        import timm

        image = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    text = _text_tower(pretrained)
    # The lower blocks keep their ImageNet batch-norm statistics (only the top is aligned): frozen, so
    # the teacher and its inherited students compute the same function in training and evaluation.
    return DualEncoder(image, text, image.num_features, text.config.hidden_size, EMBED_DIM, frozen_image_norm=True)


def load_fashion_dual_teacher() -> DualEncoder:
    """The converged teacher, in eval mode.

    Raises:
        TeacherMissingError: if ``inhernet-bench teacher --preset fashion-dual`` has not built it.
    """
    return load_teacher(teacher_spec())


def _image_bottom(tower: nn.Module, x: torch.Tensor, trained_blocks: int) -> torch.Tensor:
    """EfficientNet features before its last ``trained_blocks`` blocks."""
    x = tower.bn1(tower.conv_stem(x))
    for block in tower.blocks[: len(tower.blocks) - trained_blocks]:
        x = block(x)
    return x


def _image_top(tower: nn.Module, x: torch.Tensor, trained_blocks: int) -> torch.Tensor:
    for block in tower.blocks[len(tower.blocks) - trained_blocks :]:
        x = block(x)
    return tower.forward_head(tower.bn2(tower.conv_head(x)))


def _class_targets(labels: torch.Tensor) -> torch.Tensor:
    """Soft contrastive targets: every pair of the same class is a positive (captions repeat by class)."""
    same = (labels[:, None] == labels[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def _trained(model: DualEncoder, k: int) -> list[nn.Parameter]:
    """What alignment trains: the image tower's last ``k`` blocks and head, the projections, the logit scale."""
    tower = model.image_tower
    modules = [*tower.blocks[len(tower.blocks) - k :], tower.conv_head, tower.bn2, model.image_proj, model.text_proj]
    return [p for m in modules for p in m.parameters()] + [model.logit_scale]


def teacher_spec() -> TeacherSpec:
    """The ``fashion-dual`` teacher's :class:`~inhernet_bench.teachers.TeacherSpec` (:data:`TEACHER_RECIPE`).

    The frozen parts run once: the training examples are the image features below the trained blocks and
    the caption's index (its text tower state is computed once per distinct caption). The loss is a
    symmetric contrastive loss whose positives are the pairs of the same class.
    """
    r, states = TEACHER_RECIPE, {}
    k = r["trained_blocks"]

    def splits(model: DualEncoder) -> tuple[TensorDataset, DataLoader, DataLoader]:
        pairs = FashionPairs("train", limit=r["train_limit"])
        fit, val = stratified_split(pairs.labels, r["val_examples"], r["split_seed"])
        model.eval()
        with torch.no_grad():
            bottoms = torch.cat([_image_bottom(model.image_tower, effnet_input(pairs.images[i], IMAGE_SIZE), k)
                                 for i in torch.tensor(fit).split(500)])
            hidden = model.text_tower(input_ids=pairs.input_ids, attention_mask=pairs.attention_mask).last_hidden_state
            states["text"] = mean_pool(hidden, pairs.attention_mask)
        test = FashionPairs("test", limit=r["test_limit"])
        return (TensorDataset(bottoms, pairs.caption[fit], pairs.labels[fit]),
                DataLoader(Subset(pairs, val), batch_size=EVAL_BATCH_SIZE), DataLoader(test, batch_size=EVAL_BATCH_SIZE))

    def loss(model: DualEncoder, batch: list[torch.Tensor]) -> torch.Tensor:
        bottoms, caption, labels = batch
        image = F.normalize(model.image_proj(_image_top(model.image_tower, bottoms, k)), dim=-1)
        text = F.normalize(model.text_proj(states["text"].to(caption.device)[caption]), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image @ text.T
        targets = _class_targets(labels)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))

    return TeacherSpec(PRESET, r, build_teacher, splits, loss, "zero-shot-accuracy", lambda m: _trained(m, k))


# -- the conventional student --------------------------------------------------------------------------
def fashion_dual_student(min_params: int) -> DualEncoder:
    """Smaller towers of the teacher's families, at least ``min_params`` parameters in all.

    ``min_params`` is shared between the towers in the teacher's proportions: a narrower
    EfficientNet-Lite0 (:func:`~inhernet_bench.baselines.students.effnet_student`) and a shallower, narrower
    BERT over MiniLM's vocabulary (:func:`~inhernet_bench.baselines.students.bert_student`); a text tower
    short of the total (the text projection narrows with it) is widened until the total is reached.
    """
    from transformers import AutoConfig

    from inhernet_bench.baselines.students import bert_student, effnet_student

    with torch.device("meta"):
        shares = build_teacher(pretrained=False)
    towers = {name: sum(p.numel() for p in getattr(shares, name).parameters()) for name in ("image_tower", "text_tower")}
    total = sum(p.numel() for p in shares.parameters())
    image = effnet_student(math.ceil(min_params * towers["image_tower"] / total), num_classes=0)
    config = AutoConfig.from_pretrained(minilm_path(), local_files_only=True)
    text_target = math.ceil(min_params * towers["text_tower"] / total)
    while True:
        text = bert_student(config, text_target, head=False, pooler=False)
        model = DualEncoder(image, text, image.num_features, text.config.hidden_size, EMBED_DIM)
        short = min_params - sum(p.numel() for p in model.parameters())
        if short <= 0:
            return model
        text_target += short
