"""MAC counting (inhernet.deploy.flops): PyTorch's FLOP counter, halved."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inhernet import InherBlock, InherConfig, InherLinear, inherit
from inhernet.costs import count_macs
from tiny_models import strided_cnn


def small_cnn() -> nn.Module:
    return strided_cnn(width=8)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_macs_are_batch_times_in_times_out(bias):
    B, n, m = 7, 13, 5
    assert count_macs(nn.Linear(n, m, bias=bias), torch.randn(B, n)) == B * n * m
    # a sequence axis multiplies like the batch
    assert count_macs(nn.Linear(n, m, bias=bias), torch.randn(B, 3, n)) == B * 3 * n * m


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "padding", "groups"),
    [(3, 8, 3, 1, 1, 1), (4, 6, (3, 5), 2, 0, 1), (8, 8, 3, 1, 1, 4)],
)
def test_conv_macs_match_the_formula(cin, cout, k, stride, padding, groups):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups)
    x = torch.randn(2, cin, 11, 12)
    out = conv(x)
    kh, kw = conv.kernel_size
    expected = out.shape[0] * cout * out.shape[2] * out.shape[3] * (cin // groups) * kh * kw
    assert count_macs(conv, x) == expected


def test_embedding_lookups_count_zero():
    assert count_macs(nn.Embedding(100, 16), torch.randint(0, 100, (4, 9))) == 0


def test_inherlinear_macs_formula():
    B, n, m, r, h = 4, 20, 12, 3, 3
    block = InherLinear(n, m, r, h)
    # down r*n + gate r*h + fused up h*r*m, per row; the gate's softmax and scaling count nothing
    assert count_macs(block, torch.randn(B, n)) == B * (r * n + r * h + h * r * m)
    assert count_macs(InherLinear(n, m, r, 1), torch.randn(B, n)) == B * (r * n + r * m)


def test_inherited_full_rank_costs_more_low_rank_less():
    teacher = small_cnn()
    x = torch.randn(2, 3, 16, 16)
    base = count_macs(teacher, x)
    full = inherit(teacher, InherConfig(rank="full", experts=3, init="svd"), progress=False)
    low = inherit(teacher, InherConfig(rank=2, experts=3, init="svd"), progress=False)
    assert count_macs(full, x) > base
    assert count_macs(low, x) < base
    assert any(isinstance(m, InherBlock) for m in low.modules())


def test_batch_formats_and_modes_are_respected():
    teacher = small_cnn()
    x = torch.randn(3, 3, 16, 16)
    macs = count_macs(teacher, x)
    assert count_macs(teacher, (x, torch.zeros(3, dtype=torch.long))) == macs

    class Kw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = teacher

        def forward(self, pixels, scale):
            return self.inner(pixels * scale)

    assert count_macs(Kw(), {"pixels": x, "scale": torch.tensor(2.0), "labels": torch.zeros(3)}) == macs

    bn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    before = bn[1].running_mean.clone()
    count_macs(bn, x)
    assert bn.training and bn[1].training
    assert torch.equal(bn[1].running_mean, before)


def test_rejects_non_module():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        count_macs(lambda x: x, torch.zeros(1))
