"""Conventional smaller students: the teacher's architecture family at a reduced width."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["effnet_student", "width_scaled"]

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
