"""Conventional smaller students: the teacher's architecture family at a reduced width or depth."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import BertConfig

__all__ = [
    "bert_params", "bert_student", "bert_student_config", "effnet_student", "llama_student", "width_scaled",
]

# output channels of EfficientNet-Lite0's seven stages (timm's arch_def), the widths a multiplier scales
_LITE0_STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)


def width_scaled(build: Callable[[float], nn.Module], min_params: int, *, steps: int = 400) -> nn.Module:
    """The narrowest ``build(scale)`` with at least ``min_params`` parameters, for scale in (0, 1].

    ``build`` maps a width multiplier to a freshly initialised model; the search scans the multiplier
    on a fine grid (parameter counts are not exactly monotone once widths are rounded).
    """
    best: tuple[int, nn.Module] | None = None
    for i in range(1, steps + 1):
        model = build(i / steps)
        n = sum(p.numel() for p in model.parameters())
        if n >= min_params and (best is None or n < best[0]):
            best = (n, model)
            if n <= min_params * 1.002:
                break
    if best is None:
        raise ValueError(f"no width multiplier in (0, 1] reaches {min_params:,} parameters")
    return best[1]


def bert_params(config: BertConfig, *, head: bool = True, pooler: bool = True) -> int:
    """Parameters of a Hugging Face BERT built from ``config`` (absolute position embeddings), counted
    without building it: ``BertForSequenceClassification`` when ``head``, else ``BertModel`` (with or
    without its pooler; the head needs the pooler)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    # q, k, v, attention output (h x h + bias), two LayerNorms, feed-forward h -> i -> h
    layer = 4 * (h * h + h) + 2 * (2 * h) + (h * i + i) + (i * h + h)
    total = embeddings + layers * layer
    if head or pooler:
        total += h * h + h
    if head:
        total += h * config.num_labels + config.num_labels
    return total


def _heads_for(hidden: int, head_dim: float) -> int:
    """The divisor of ``hidden`` closest to ``hidden / head_dim`` (more heads on a tie)."""
    want = hidden / head_dim
    return min((d for d in range(1, hidden + 1) if hidden % d == 0), key=lambda d: (abs(d - want), -d))


def bert_student_config(
    config: BertConfig,
    min_params: int,
    *,
    head: bool = True,
    pooler: bool = True,
    layers: int | None = None,
    min_layers: int | None = None,
    hidden_multiple: int = 2,
) -> BertConfig:
    """A smaller ``BertConfig`` of the teacher's family with at least ``min_params`` parameters.

    Same vocabulary, positions, activation and dropout as ``config``; fewer layers and/or a narrower
    hidden size (a multiple of ``hidden_multiple``), ``intermediate_size = 4 * hidden`` and the head
    count that keeps the teacher's head width closest. For each depth from ``config``'s down to
    ``min_layers`` (default: half of it, rounded up, as DistilBERT-style students keep; ``layers``
    fixes one depth) the narrowest width reaching ``min_params`` is found; the candidate with the
    fewest parameters wins, a deeper one on ties. ``head``/``pooler`` say which model is counted (see
    :func:`bert_params`).

    Raises:
        ValueError: if no such config reaches ``min_params`` without exceeding the teacher's width.
    """
    if min_params < 1:
        raise ValueError(f"min_params must be >= 1, got {min_params}")
    if hidden_multiple < 1:
        raise ValueError(f"hidden_multiple must be >= 1, got {hidden_multiple}")
    depth = config.num_hidden_layers
    if layers is not None:
        depths = [layers]
    else:
        depths = list(range(depth, (min_layers if min_layers is not None else -(-depth // 2)) - 1, -1))
    if not depths or not all(1 <= d <= depth for d in depths):
        raise ValueError(f"layers/min_layers must lie in 1..{depth} (the teacher's depth), got {depths}")
    widths = list(range(hidden_multiple, config.hidden_size + 1, hidden_multiple))
    best: tuple[int, BertConfig] | None = None
    for d in depths:
        found = _narrowest_bert(config, d, widths, min_params, head=head, pooler=pooler)
        if found is not None and (best is None or found[0] < best[0]):
            best = found  # depths run deepest first: a tie keeps the deeper one
    if best is None:
        raise ValueError(
            f"no BERT of {depths[-1]}-{depths[0]} layers and hidden size <= {config.hidden_size} reaches "
            f"{min_params:,} parameters; allow more layers (min_layers/layers) or a larger min_params target"
        )
    return best[1]


def _narrowest_bert(
    config: BertConfig, depth: int, widths: list[int], min_params: int, *, head: bool, pooler: bool
) -> tuple[int, BertConfig] | None:
    """``(parameters, config)`` of the narrowest of ``widths`` at ``depth`` layers reaching ``min_params``
    (``intermediate_size = 4 * hidden``, the head count keeping ``config``'s head width closest); ``None``
    where even the widest falls short."""
    head_dim = config.hidden_size / config.num_attention_heads

    def candidate(hidden: int) -> BertConfig:
        student = copy.deepcopy(config)
        student.num_hidden_layers, student.hidden_size = depth, hidden
        student.intermediate_size = 4 * hidden
        student.num_attention_heads = _heads_for(hidden, head_dim)
        return student

    def count(k: int) -> int:
        return bert_params(candidate(widths[k]), head=head, pooler=pooler)

    if count(len(widths) - 1) < min_params:
        return None
    lo, hi = 0, len(widths) - 1  # parameters grow with the width: bisect for the narrowest
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < min_params else (lo, mid)
    return count(lo), candidate(widths[lo])


def bert_student(
    config: BertConfig,
    min_params: int,
    *,
    num_labels: int | None = None,
    head: bool = True,
    pooler: bool = True,
    layers: int | None = None,
    min_layers: int | None = None,
    seed: int | None = None,
) -> nn.Module:
    """A freshly initialised smaller BERT with at least ``min_params`` parameters (see
    :func:`bert_student_config`): a ``BertForSequenceClassification`` with ``num_labels`` classes
    (default ``config.num_labels``) when ``head``, else a bare ``BertModel`` (``pooler`` or not), e.g.
    the encoder of a dual-encoder student. ``seed`` seeds the init without touching the global RNG."""
    from transformers import BertForSequenceClassification, BertModel

    config = copy.deepcopy(config)
    if num_labels is not None:
        config.num_labels = num_labels
    student_config = bert_student_config(
        config, min_params, head=head, pooler=pooler, layers=layers, min_layers=min_layers
    )
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if head:
            model: nn.Module = BertForSequenceClassification(student_config)
        else:
            model = BertModel(student_config, add_pooling_layer=pooler)
    actual = sum(p.numel() for p in model.parameters())
    if actual < min_params:  # the count above is a formula: refuse to return an undersized student
        raise RuntimeError(
            f"built a {type(model).__name__} with {actual:,} parameters, fewer than the {min_params:,} "
            "counted; bert_params() does not match this transformers version"
        )
    return model


def effnet_student(min_params: int, num_classes: int = 10) -> nn.Module:
    """timm EfficientNet-Lite0 narrowed by a channel multiplier, the narrowest with ``>= min_params``.

    Randomly initialised (timm's init). As in every EfficientNet-Lite, the multiplier scales the
    blocks' channels while the stem (32) and the head (1280 features) stay fixed. timm rounds every
    width to a multiple of 8, so a small student can overshoot ``min_params`` by about 10% (371,626
    parameters for 338,336). Returned with channels-last convolution weights, like the
    ``fashion-effnet`` teacher (faster on a CPU).
    """
    # timm's public efficientnet_lite0() pins channel_multiplier=1.0; its generator takes any multiplier.
    from timm.models._efficientnet_builder import round_channels
    from timm.models.efficientnet import _gen_efficientnet_lite

    last: dict[tuple[int, ...], nn.Module] = {}

    def build(scale: float) -> nn.Module:
        # Widths are rounded to multiples of 8, so neighbouring multipliers often give the same
        # network: building a timm model takes a noticeable fraction of a second, so reuse it.
        widths = tuple(round_channels(c, scale) for c in _LITE0_STAGE_CHANNELS)
        if widths not in last:
            last.clear()
            last[widths] = _gen_efficientnet_lite(
                "efficientnet_lite0", channel_multiplier=scale, num_classes=num_classes
            )
        return last[widths]

    return width_scaled(build, min_params, steps=200).to(memory_format=torch.channels_last)


def llama_student(config: Any, min_params: int) -> nn.Module:
    """A shallower, randomly initialised ``LlamaForCausalLM`` with at least ``min_params`` parameters.

    ``config`` is the teacher's (Hugging Face) ``LlamaConfig``. The student keeps the teacher's width,
    heads, vocabulary and tied embeddings, and takes the fewest decoder layers that reach
    ``min_params``: the conventional way to shrink a narrow-deep model such as SmolLM2 (narrowing it
    would also shrink the tied vocabulary embedding, which holds a fifth of its parameters). The size is
    affine in the layer count, so two models on the meta device (1 and 2 layers) price every depth.
    """
    import torch
    from transformers import AutoModelForCausalLM

    def with_layers(layers: int) -> Any:
        candidate = copy.deepcopy(config)
        candidate.num_hidden_layers = layers
        if isinstance(getattr(candidate, "layer_types", None), list):
            candidate.layer_types = candidate.layer_types[:layers]
        return candidate

    def size(layers: int) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModelForCausalLM.from_config(with_layers(layers)).parameters())

    teacher_layers = int(config.num_hidden_layers)
    one, two = size(1), size(2)
    per_layer, base = two - one, 2 * one - two
    layers = max(1, -(-(min_params - base) // per_layer))
    if layers > teacher_layers:
        raise ValueError(
            f"even all {teacher_layers} layers of {type(config).__name__} stay below {min_params:,} parameters; "
            "give a smaller min_params"
        )
    return AutoModelForCausalLM.from_config(with_layers(layers), dtype=torch.float32)
