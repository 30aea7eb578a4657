"""At rank r the block is the rank-r truncation at init; whitening lowers the error on the data.

The reference truncation ``U_r S_r V_r^T`` is computed here, independently, with ``torch.linalg.svd``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

import tiny_models as tm
from inhernet import InherBlock, InherConfig, inherit
from inhernet.experimental import ExperimentalConfig


def truncate(w: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


def _fill(layer: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return layer


def _linear():
    layer = _fill(nn.Linear(64, 48))
    return layer, torch.randn(7, 64), lambda x, w: F.linear(x, w.float(), layer.bias), layer.weight


def _hf_conv1d():
    layer = _fill(Conv1D(48, 64))  # nf=48 outputs, nx=64 inputs; weight is (in, out)
    return layer, torch.randn(2, 5, 64), lambda x, w: x @ w.float().T + layer.bias, layer.weight.T


def _conv2d():
    layer = _fill(nn.Conv2d(8, 24, 3, stride=2, padding=1, padding_mode="reflect"))

    def ref(x, w):
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(padded, w.float().reshape(layer.weight.shape), layer.bias, stride=2)

    return layer, torch.randn(2, 8, 9, 9), ref, layer.weight.flatten(1)


def _conv1d():
    layer = _fill(nn.Conv1d(12, 24, 3, dilation=2, padding=2))

    def ref(x, w):
        return F.conv1d(x, w.float().reshape(layer.weight.shape), layer.bias, dilation=2, padding=2)

    return layer, torch.randn(2, 12, 15), ref, layer.weight.flatten(1)


def _embedding():
    layer = _fill(nn.Embedding(60, 16))
    # W = E^T (the map from one-hot tokens), so the truncation of W is the truncation of E, transposed.
    return layer, torch.randint(0, 60, (3, 6)), lambda ids, w: F.embedding(ids, w.float().T), layer.weight.T


LAYERS = {
    "linear": _linear,
    "hf_conv1d": _hf_conv1d,
    "conv2d": _conv2d,
    "conv1d": _conv1d,
    "embedding": _embedding,
}


@pytest.mark.parametrize("experts", [1, 3])
@pytest.mark.parametrize("rank", [1, 3, 6])
@pytest.mark.parametrize("name", list(LAYERS))
def test_svd_init_is_rank_r_truncation(name: str, rank: int, experts: int) -> None:
    layer, x, reference, w = LAYERS[name]()  # sized so that every rank here saves parameters
    teacher = nn.Sequential(layer).eval()
    cfg = ExperimentalConfig(rank=rank, experts=experts, init="svd", expert_noise=0.05)
    student = inherit(teacher, cfg, progress=False).eval()
    block = student[0]
    assert isinstance(block, InherBlock) and block.rank == rank

    w_r = truncate(w.detach(), rank)
    want = reference(x, w_r)
    got = tm.run(student, x)
    assert tm.rel_err(got, want) <= 1e-5

    # The mean expert times the down projection is W_r (the deviations sum to zero).
    down = (
        block.down.weight.detach().double().reshape(rank, -1)
        if name != "embedding"
        else (block.down.weight.detach().double().T)
    )
    up = block.expert_weights().double().mean(0)
    assert torch.allclose(up @ down, w_r, atol=1e-5 * float(w_r.abs().max()))
    # Asymmetric: the down side is orthonormal (V_r^T), all singular values sit in the up side.
    assert torch.allclose(down @ down.T, torch.eye(rank, dtype=torch.float64), atol=1e-5)
    s = torch.linalg.svdvals(w.detach().double())[:rank]
    assert torch.allclose(up.norm(dim=0), s, rtol=1e-5)


def _correlated(n: int, batches: int, g: torch.Generator) -> list[torch.Tensor]:
    """Strongly anisotropic, correlated inputs: x = z @ M with M = Q diag(decaying) Q'."""
    q1, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    m = q1 @ torch.diag(torch.logspace(0, -3, n)) @ q2
    return [torch.randn(64, n, generator=g) @ m for _ in range(batches)]


@pytest.mark.parametrize("rank", [2, 4, 8])
def test_whitened_init_has_lower_output_error_on_calibration_data(rank: int) -> None:
    g = torch.Generator().manual_seed(0)
    layer = _fill(nn.Linear(32, 32))
    teacher = nn.Sequential(layer).eval()
    calib = _correlated(32, 4, g)
    x = torch.cat(calib)
    want = tm.run(teacher, x)

    def err(init: str) -> float:
        cfg = InherConfig(rank=rank, experts=1, init=init)
        student = inherit(teacher, cfg, calib=calib, progress=False).eval()
        assert isinstance(student[0], InherBlock)
        return float((tm.run(student, x) - want).norm())

    plain, whiten = err("svd"), err("whiten")
    assert whiten < 0.9 * plain

    # And it is the optimal rank-r map on these inputs: U_r U_r^T W with U from the SVD of W X^T.
    w = layer.weight.detach().double()
    u, _, _ = torch.linalg.svd(w @ x.double().T, full_matrices=False)
    optimal = float(((u[:, :rank] @ u[:, :rank].T @ w - w) @ x.double().T).norm())
    assert whiten == pytest.approx(optimal, rel=1e-2, abs=1e-4)


@pytest.mark.parametrize("magnitude", [1e-18, 1e-6, 1e15])
def test_whitened_init_is_scale_invariant(magnitude: float) -> None:
    """Tiny or huge calibration inputs give the same (finite) block: whitening is scale free."""
    g = torch.Generator().manual_seed(0)
    teacher = nn.Sequential(_fill(nn.Linear(10, 8))).eval()
    calib = _correlated(10, 2, g)
    ref = inherit(teacher, InherConfig(rank=3, experts=1, init="whiten"), calib=calib, progress=False)
    scaled = [b * magnitude for b in calib]
    student = inherit(teacher, InherConfig(rank=3, experts=1, init="whiten"), calib=scaled, progress=False)
    for p in student.parameters():
        assert torch.isfinite(p).all()
    x = torch.cat(calib)
    assert tm.rel_err(tm.run(student, x), tm.run(ref, x)) <= 1e-4


def test_whiten_with_all_zero_layer_inputs_falls_back_to_plain_svd() -> None:
    teacher = nn.Sequential(_fill(nn.Linear(6, 5))).eval()
    calib = [torch.zeros(4, 6)]
    whiten = inherit(teacher, InherConfig(rank=2, experts=1, init="whiten"), calib=calib, progress=False)
    plain = inherit(teacher, InherConfig(rank=2, experts=1, init="svd"), progress=False)
    x = torch.randn(3, 6)
    for p in whiten.parameters():
        assert torch.isfinite(p).all()
    assert tm.rel_err(tm.run(whiten, x), tm.run(plain, x)) <= 1e-5
