"""Property test: at full rank the block reproduces any Linear / Conv1d / Conv2d layer.

Hypothesis draws the layer type, shapes, stride, padding (int or ``"same"`` where PyTorch allows it),
dilation and padding mode, plus experts and init; the inherited layer must match the teacher's output.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import tiny_models as tm
from inhernet import InherBlock, InherConfig, inherit

TOL = 1e-4
MODES = ("zeros", "reflect", "replicate", "circular")


@st.composite
def layers(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor]:
    kind = draw(st.sampled_from(["linear", "conv1d", "conv2d"]))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        n, m = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))  # extra leading dims
        layer = nn.Linear(n, m, bias=bias)
        x = torch.randn(*lead, 5, n, generator=g)
    else:
        dims = 1 if kind == "conv1d" else 2
        cin, cout = draw(st.integers(1, 5)), draw(st.integers(1, 6))
        kernel = tuple(draw(st.integers(1, 4)) for _ in range(dims))
        dilation = tuple(draw(st.integers(1, 3)) for _ in range(dims))
        mode = draw(st.sampled_from(MODES))
        same = draw(st.booleans())
        if same:  # PyTorch allows padding="same" with stride 1 only
            stride: tuple[int, ...] = (1,) * dims
            padding: str | tuple[int, ...] = "same"
            pads = tuple((d * (k - 1) + 1) // 2 for k, d in zip(kernel, dilation, strict=True))
        else:
            stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
            padding = pads = tuple(draw(st.integers(0, 3)) for _ in range(dims))
        # Long enough for one output position, and for reflect padding (pad < size).
        size = [
            d * (k - 1) + p + 1 + draw(st.integers(0, 4))
            for k, d, p in zip(kernel, dilation, pads, strict=True)
        ]
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        layer = conv(
            cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, padding_mode=mode, bias=bias
        )
        batched = draw(st.booleans())
        x = torch.randn(*((2,) if batched else ()), cin, *size, generator=g)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return layer, x


@pytest.mark.filterwarnings("ignore:Using padding=.same.:UserWarning")
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=layers(), experts=st.sampled_from([1, 3]), init=st.sampled_from(["svd", "whiten"]))
def test_full_rank_reproduces_any_layer(
    case: tuple[nn.Module, torch.Tensor], experts: int, init: str
) -> None:
    layer, x = case
    teacher = nn.Sequential(layer).eval()
    cfg = InherConfig(rank="full", experts=experts, init=init)
    student = inherit(teacher, cfg, calib=[x], progress=False).eval()
    block = student[0]
    assert isinstance(block, InherBlock)
    assert block.rank == min(layer.weight.flatten(1).shape)
    assert block.experts == experts
    want = tm.run(teacher, x)
    got = tm.run(student, x)
    assert got.shape == want.shape
    scale = want.abs().max().clamp_min(1e-6)
    assert float((got - want).abs().max() / scale) <= TOL
