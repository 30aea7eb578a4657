"""A factorised layer still answers what model code reads of the dense layer it replaced.

Invariant: a model whose own code reads a replaced layer's hyperparameters (``conv.stride[0]``,
``proj.in_features``) or uses its ``weight`` outside the layer's forward (``F.linear(x, self.qkv.weight,
self.qkv.bias)``, a tied head's ``embed.weight.T``) runs after ``inherit()`` without calibration data,
wherever the teacher ran. One row per tiny architecture (PEFT's table-driven style); for every row:

* at a budget that factorises the read layer the student runs forward, and it warns, once and naming
  the layer, exactly when the weight's values are used (that layer's compute is then not reduced);
* at full rank it reproduces the teacher's outputs;
* the block's attributes equal the teacher layer's, ``weight`` included (dtype, device, shape);
* gradients flow through ``block.weight`` into the factors (a finite-difference check in float64).

And for the layers themselves: at full rank ``weight``'s values are the teacher's weight for every kind
(Linear, Conv1d, Conv2d, Embedding, Hugging Face Conv1D); a block with several gated experts has no
single dense weight and says how to get one; the computed weight refuses in-place writes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inhernet import InherBlock, InherConfig, InherLinear, compact, inherit, load, save

# What model code may read of each replaced layer type, besides weight and bias.
ATTRIBUTES: dict[type, tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    nn.Conv1d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                "padding_mode"),
    nn.Embedding: ("num_embeddings", "embedding_dim", "padding_idx"),
}
ATTRIBUTES[nn.Conv2d] = ATTRIBUTES[nn.Conv1d]
NOT_REDUCED = "compute is not reduced"
# These tiny models cannot land within 2% of every budget; that is not what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore:the plan reaches:UserWarning")


# -- the tiny architectures -------------------------------------------------------------------------------
class AudioEncoder(nn.Module):
    """wav2vec2's feature encoder, in small: output lengths from each conv's ``kernel_size[0]`` / ``stride[0]``."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(1, 24, 10, stride=5), nn.Conv1d(24, 24, 3, stride=2),
                                    nn.Conv1d(24, 24, 2, stride=2)])
        self.proj = nn.Linear(24, 16)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            lengths = torch.div(lengths - conv.kernel_size[0], conv.stride[0], rounding_mode="floor") + 1
        return lengths

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = wave.unsqueeze(1)
        for conv in self.convs:
            x = F.gelu(conv(x))
        frames = self.output_lengths(lengths)
        mask = (torch.arange(x.shape[-1]) < frames[:, None]).unsqueeze(-1)
        return (self.proj(x.transpose(1, 2)) * mask).sum(1) / frames[:, None]


class WindowedAttention(nn.Module):
    """Swin/SAM-style windowed attention: the qkv weight handed to ``F.linear`` by the attention itself."""

    def __init__(self, dim: int = 32, heads: int = 4, window: int = 4) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        windows = x.reshape(n * length // self.window, self.window, c)
        qkv = F.linear(windows, self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.reshape(-1, self.window, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, c)
        return self.proj(out)


class WindowedViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(12, 32), WindowedAttention(), nn.Linear(32, 5)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        h = self.embed(patches)
        return self.head((h + self.block(h)).mean(1))


class TiedLM(nn.Module):
    """A language model whose head is its embedding's weight (``h @ embed.weight.T``)."""

    def __init__(self, vocab: int = 64, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return (h + self.mlp(h)) @ self.embed.weight.T


class TokenReshaper(nn.Module):
    """Splits a flat input into tokens of ``proj.in_features`` before projecting them."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.head = nn.Linear(24, 48), nn.Linear(48, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(x.shape[0], -1, self.proj.in_features)
        return self.head(F.relu(self.proj(tokens)).mean(1))


class ConvGeometry(nn.Module):
    """Computes its conv's output size from padding, dilation, kernel and stride, and checks the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, stride=2, padding=1, dilation=2, padding_mode="reflect")
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        assert c.groups == 1 and c.padding_mode == "reflect" and x.shape[1] == c.in_channels
        side = (x.shape[-1] + 2 * c.padding[0] - c.dilation[0] * (c.kernel_size[0] - 1) - 1) // c.stride[0] + 1
        y = F.relu(c(x)).reshape(x.shape[0], c.out_channels, side * side)
        return self.head(y.mean(-1))


@dataclass(frozen=True)
class Row:
    """One architecture: its factory, an input batch, the layer its code reads, and whether the code uses
    that layer's weight values (then the student warns that the layer's compute is not reduced)."""

    build: Callable[[], nn.Module]
    batch: Callable[[], Any]
    layer: str
    reads_values: bool


ROWS = {
    "audio-conv-strides": Row(
        AudioEncoder, lambda: {"wave": torch.randn(3, 160), "lengths": torch.tensor([160, 120, 96])}, "convs.1",
        reads_values=False,
    ),
    "windowed-attention": Row(WindowedViT, lambda: torch.randn(2, 8, 12), "block.qkv", reads_values=True),
    "tied-embedding-lm": Row(TiedLM, lambda: torch.randint(0, 64, (2, 9)), "embed", reads_values=True),
    "linear-in-features": Row(TokenReshaper, lambda: torch.randn(3, 96), "proj", reads_values=False),
    "conv-geometry": Row(ConvGeometry, lambda: torch.randn(2, 3, 16, 16), "conv", reads_values=False),
}
NAMES = list(ROWS)


def teacher_and_batch(name: str) -> tuple[nn.Module, Any]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ROWS[name].build().eval(), ROWS[name].batch()


def run(model: nn.Module, batch: Any) -> torch.Tensor:
    return model(**batch) if isinstance(batch, dict) else model(batch)


def dense_reads(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if NOT_REDUCED in str(w.message)]


# -- the table ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_without_calib_the_student_runs_and_warns_once_per_value_reader(name: str) -> None:
    teacher, batch = teacher_and_batch(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = inherit(teacher, InherConfig(budget=0.5, init="svd"), progress=False)
        assert isinstance(student.get_submodule(ROWS[name].layer), InherBlock)
        for _ in range(2):  # the warning is given once per layer, not once per forward
            with torch.no_grad():
                assert torch.isfinite(run(student, batch)).all()
    reads = dense_reads(caught)
    if ROWS[name].reads_values:
        assert len(reads) == 1
        assert repr(ROWS[name].layer) in reads[0] and f"exclude=[{ROWS[name].layer!r}]" in reads[0]
    else:
        assert reads == []


@pytest.mark.parametrize("name", NAMES)
def test_full_rank_without_calib_reproduces_the_teacher(name: str) -> None:
    teacher, batch = teacher_and_batch(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = inherit(teacher, InherConfig(rank="full", init="svd"), progress=False).eval()
        with torch.no_grad():
            got, want = run(student, batch), run(teacher, batch)
    assert isinstance(student.get_submodule(ROWS[name].layer), InherBlock)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_the_block_answers_the_teacher_layers_attributes(name: str) -> None:
    teacher, _ = teacher_and_batch(name)
    student = inherit(teacher, InherConfig(budget=0.5, init="svd"), progress=False)
    dense, block = teacher.get_submodule(ROWS[name].layer), student.get_submodule(ROWS[name].layer)
    for attr in ATTRIBUTES[type(dense)]:
        assert getattr(block, attr) == getattr(dense, attr), attr
    w = block.weight
    assert (w.shape, w.dtype, w.device, w.requires_grad) == (dense.weight.shape, dense.weight.dtype,
                                                             dense.weight.device, True)
    assert (block.bias is None) == (getattr(dense, "bias", None) is None)
    with pytest.raises(AttributeError, match="read-only"):
        setattr(block, ATTRIBUTES[type(dense)][0], 1)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow_through_the_weight_into_the_factors(name: str) -> None:
    teacher, _ = teacher_and_batch(name)
    student = inherit(teacher, InherConfig(budget=0.5, init="svd"), progress=False).double()
    block = student.get_submodule(ROWS[name].layer)
    factors = [block.down.weight, block.up.weight]
    probe = torch.randn(block.weight.shape, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        def loss() -> torch.Tensor:
            return (torch.sin(block.weight) * probe).sum()

        grads = torch.autograd.grad(loss(), factors)
        assert all(bool(g.abs().sum() > 0) for g in grads)
        # The directional derivative along random factor directions matches central differences.
        directions = [torch.randn_like(p) for p in factors]
        eps = 1e-6
        with torch.no_grad():
            values = []
            for sign in (1, -1):
                for p, d in zip(factors, directions, strict=True):
                    p.add_(sign * eps * d)
                values.append(loss())
                for p, d in zip(factors, directions, strict=True):
                    p.sub_(sign * eps * d)
    numeric = float(values[0] - values[1]) / (2 * eps)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, directions, strict=True))
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


# -- the layers ---------------------------------------------------------------------------------------------
def _conv1d_hf() -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    return Conv1D(8, 8)  # square: only the kind can tell that its weight is stored (in, out)


@pytest.mark.parametrize("make", [
    lambda: nn.Linear(6, 9),
    lambda: nn.Conv1d(3, 7, 4, stride=2),
    lambda: nn.Conv2d(2, 5, (3, 2), padding=1),
    lambda: nn.Embedding(11, 4, padding_idx=-1),
    _conv1d_hf,
], ids=["linear", "conv1d", "conv2d", "embedding", "hf-conv1d"])
def test_at_full_rank_the_weight_values_are_the_teachers(make: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(make())
    with torch.no_grad():
        teacher[0].weight.normal_()
    block = inherit(teacher, InherConfig(rank="full", init="svd"), progress=False)[0]
    assert isinstance(block, InherBlock)
    torch.testing.assert_close(block.dense_weight(), teacher[0].weight, rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(block.weight + 0, teacher[0].weight, rtol=1e-4, atol=1e-5)


def test_gated_experts_have_no_single_dense_weight() -> None:
    teacher, batch = teacher_and_batch("windowed-attention")
    student = inherit(teacher, InherConfig(rank="full", init="svd", experts=2), progress=False)
    w = student.block.qkv.weight
    assert (w.shape, w.dtype) == ((96, 32), torch.float32)  # metadata is still served
    with pytest.raises(AttributeError, match=r"'block.qkv' has 2 experts.*experts=1.*exclude=\['block.qkv'\]"):
        run(student, batch)
    # Hyperparameters and metadata need no dense weight: gated blocks serve them too.
    audio, wave = teacher_and_batch("audio-conv-strides")
    gated = inherit(audio, InherConfig(rank="full", init="svd", experts=2), progress=False)
    assert gated.convs[1].stride == (2,) and torch.isfinite(run(gated, wave)).all()
    # Keeping the layer dense, as the message says, gives a model that runs.
    student = inherit(teacher, InherConfig(rank="full", init="svd", experts=2, exclude=["block.qkv"]), progress=False)
    assert isinstance(student.block.qkv, nn.Linear) and torch.isfinite(run(student, batch)).all()


def test_the_computed_weight_refuses_in_place_writes() -> None:
    block = InherLinear(6, 4, rank=2)
    with pytest.raises(RuntimeError, match="write the factors"):
        block.weight.mul_(2)
    with pytest.raises(RuntimeError, match="write the factors"):
        nn.init.zeros_(block.weight)
    w = block.weight
    with pytest.raises(RuntimeError, match="write the factors"):
        w += 1
    with pytest.raises(RuntimeError, match="write the factors"):
        w[0] = 1


class _FasterFactorised:
    """Costs under which every factorised layer beats its dense one (compact keeps them all)."""

    def dense(self, shape: Any) -> float:
        return 1e-3

    def factorised(self, shape: Any, rank: int) -> float:
        return 1e-4


def test_every_path_that_places_blocks_records_their_names(tmp_path: Any) -> None:
    """inherit (one pass and sequential), load and compact (reranked blocks) record each block's dotted
    name; the warning quotes it even when the model runs inside another module."""
    teacher, batch = teacher_and_batch("windowed-attention")
    one_pass = inherit(teacher, InherConfig(budget=0.5, init="svd"), progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            nn.Sequential(one_pass)(batch)
    assert "'block.qkv'" in dense_reads(caught)[0]
    save(one_pass, tmp_path / "student")
    models = {
        "one-pass": one_pass,
        "sequential": inherit(teacher, InherConfig(budget=0.9), calib=[batch], progress=False),
        "load": load(tmp_path / "student", base=teacher_and_batch("windowed-attention")[0]),
        "compact": compact(one_pass, example=batch, rank_multiple=2, tolerance=float("inf"),
                           costs=_FasterFactorised()),
    }
    for path, model in models.items():
        placed = {n: m.inhernet_name for n, m in model.named_modules() if isinstance(m, InherBlock)}
        assert placed and all(name == recorded for name, recorded in placed.items()), path
    reranked = models["compact"].block.qkv
    assert reranked is not one_pass.block.qkv and reranked.rank % 2 == 0
