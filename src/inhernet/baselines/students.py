"""Conventional smaller students: the teacher's architecture family at a reduced width."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["width_scaled"]


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
