"""One table over every tiny architecture: inherit() keeps the model's own code working.

In the style of PEFT's tests/test_custom_models.py: each row is a factory from tiny_models (a model built
from a config object, no hub access, and one input batch). For every row, with the batch as calib:

* ``rank="full"`` reproduces the teacher's outputs (relative error <= 1e-4);
* a budget of half the parameters (whitened spectra) is met: at most the target and within 2% of it,
  and the inherited model runs forward in eval mode and forward + backward in training mode;
* save then load onto a fresh teacher gives identical outputs.

Several rows read a layer's weight outside that layer's forward (nn.MultiheadAttention's out_proj, T5's
feed-forward reading ``wo.weight.dtype``, ViT and CLIP embeddings reading their patch projection's
dtype): those readers are found on the example input, not listed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tiny_models as tm
from inhernet import InherBlock, InherConfig, InherLinear, inherit, load, plan, save

ARCHITECTURES = {
    "mlp": tm.mlp,
    "cnn": tm.cnn,
    "resnet18": tm.resnet18,
    "conv1d": tm.conv1d_net,
    "embedding": tm.embed_net,
    "torchvision-vit": tm.vit_tiny,
    "transformer-encoder": tm.transformer_encoder,
    "transformer-encoder-seq-first": tm.transformer_encoder_seq_first,
    "bert-classifier": tm.bert_tiny,
    "bert-model": tm.hf_bert_model,
    "gpt2": tm.gpt2_tiny,
    "llama": tm.llama_tiny,
    "t5": tm.t5_tiny,
    "bart": tm.bart_tiny,
    "hf-vit": tm.hf_vit_tiny,
    "clip": tm.clip_model_tiny,
}
NAMES = list(ARCHITECTURES)
# Half the parameters; torch's encoder keeps its attention's in_proj (a raw parameter) and out_proj (read
# by MultiheadAttention.forward) dense, so only ~60% is reachable there.
BUDGETS = {"transformer-encoder": 0.7, "transformer-encoder-seq-first": 0.7}


def budget_config(name: str) -> InherConfig:
    return InherConfig(budget=BUDGETS.get(name, 0.5), experts=1, init="whiten")


def outputs(model: nn.Module, batch) -> torch.Tensor:
    with torch.no_grad():
        return tm.output_of(model(**batch) if isinstance(batch, dict) else model(batch))


@pytest.fixture(scope="module")
def budgeted() -> dict:
    """Each architecture inherited once at BUDGET (shared by the budget and save/load tests)."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            teacher, batch = ARCHITECTURES[name]()
            cache[name] = teacher, batch, inherit(teacher, budget_config(name), calib=[batch], progress=False)
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_full_rank_reproduces_the_teacher(name: str) -> None:
    teacher, batch = ARCHITECTURES[name]()
    want = outputs(teacher, batch)
    student = inherit(teacher, InherConfig(rank="full"), calib=[batch], progress=False).eval()
    assert any(isinstance(m, InherBlock) for m in student.modules())
    assert tm.rel_err(outputs(student, batch), want) <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_budget_is_met_and_the_model_runs(name: str, budgeted) -> None:
    teacher, batch, student = budgeted(name)
    p = student.inhernet_plan
    assert p.target_params == int(BUDGETS.get(name, 0.5) * tm.n_params(teacher))
    assert tm.n_params(student) == p.total_params
    assert 0.98 * p.target_params <= p.total_params <= p.target_params
    assert torch.isfinite(outputs(student.eval(), batch)).all()
    student.train()  # the training path (dropout, no fused fast path) runs and back-propagates too
    try:
        out = tm.output_of(student(**batch) if isinstance(batch, dict) else student(batch))
        out.float().pow(2).mean().backward()
    finally:
        student.zero_grad(set_to_none=True)
        student.eval()
    blocks = [m for m in student.modules() if isinstance(m, InherBlock)]
    assert blocks and all(m.down.weight.grad is None for m in blocks)  # zeroed again, as left


@pytest.mark.parametrize("name", NAMES)
def test_save_load_gives_identical_outputs(name: str, budgeted, tmp_path: Path) -> None:
    _, batch, student = budgeted(name)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))  # off the init, as after fine-tuning
    want = outputs(student.eval(), batch)
    loaded = load(save(student, tmp_path / name), base=ARCHITECTURES[name]()[0]).eval()
    assert torch.equal(outputs(loaded, batch), want)


# -- weight readers, found on the example input -----------------------------------------------------------
@pytest.mark.parametrize("name", ["transformer-encoder", "transformer-encoder-seq-first", "torchvision-vit"])
def test_multihead_attention_out_proj_is_found_and_kept_dense(name: str) -> None:
    teacher, batch = ARCHITECTURES[name]()
    rows = {r.name: r for r in plan(teacher, InherConfig(rank="full", init="svd"), calib=[batch]).layers}
    out_proj = [r for n, r in rows.items() if n.endswith("out_proj")]
    assert len(out_proj) == 2
    for r in out_proj:
        assert r.rank is None and "outside its forward by MultiheadAttention.forward" in r.reason
    # The feed-forward layers are read by the fused fast path for metadata only: factorised.
    mlp = [r for n, r in rows.items() if n.endswith(("linear1", "linear2", "mlp.0", "mlp.3"))]
    assert len(mlp) == 4 and all(r.rank is not None for r in mlp)


@pytest.mark.parametrize(("name", "layer"), [
    ("t5", "encoder.block.0.layer.1.DenseReluDense.wo"),  # T5DenseActDense reads wo.weight.dtype
    ("hf-vit", "vit.embeddings.patch_embeddings.projection"),  # ViT casts pixels to its dtype
    ("clip", "vision_model.embeddings.patch_embedding"),  # CLIPVisionEmbeddings, the same
])
def test_layers_read_for_metadata_only_are_factorised(name: str, layer: str) -> None:
    teacher, batch = ARCHITECTURES[name]()
    student = inherit(teacher, InherConfig(rank="full", init="svd"), calib=[batch], progress=False)
    block = student.get_submodule(layer)
    assert isinstance(block, InherBlock)
    dense = teacher.get_submodule(layer).weight
    assert (block.weight.dtype, block.weight.device, block.weight.shape) == (dense.dtype, dense.device, dense.shape)


def test_without_an_example_outside_readers_get_the_computed_weight() -> None:
    # CLIP's embeddings read their patch embedding's weight: factorised, it computes the values they read.
    teacher, batch = tm.clip_model_tiny()
    want = outputs(teacher, batch)
    student = inherit(teacher, InherConfig(rank="full", init="svd"), progress=False).eval()
    assert isinstance(student.get_submodule("vision_model.embeddings.patch_embedding"), InherBlock)
    assert tm.rel_err(outputs(student, batch), want) <= 1e-4


def test_weight_view_serves_metadata_and_computes_values() -> None:
    block = InherLinear(6, 4, rank=2)
    w = block.weight
    assert (w.shape, w.dtype, w.size(1), w.dim(), w.is_floating_point()) == ((4, 6), torch.float32, 6, 2, True)
    assert block.bias is block.up.bias
    x = torch.randn(3, 6)
    with pytest.warns(UserWarning, match="compute is not reduced"):  # values: the dense weight, computed
        torch.testing.assert_close(F.linear(x, w, block.bias), block(x))


def test_a_subclass_with_its_own_forward_stays_dense() -> None:
    class Scaled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), Scaled(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = {r.name: r for r in plan(model, InherConfig(rank="full", init="svd")).layers}
    assert rows["0"].rank is not None
    assert rows["2"].rank is None and "overrides Linear.forward" in rows["2"].reason


class _Picky(nn.Module):
    """Refuses to run unless its first layer's weight is a real nn.Parameter (defeats the probes too)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if type(self.fc.weight) is not nn.Parameter:
            raise TypeError("fc.weight must be an nn.Parameter")
        return self.head(torch.relu(self.fc(x)))


def test_inherit_refuses_to_return_a_model_that_fails_on_the_example() -> None:
    with (
        pytest.warns(UserWarning, match="could not trace weight readers"),
        pytest.raises(RuntimeError, match="fails on the first calib batch") as caught,
    ):
        inherit(_Picky(), InherConfig(rank="full"), calib=[torch.randn(4, 8)], progress=False)
    assert isinstance(caught.value.__cause__, TypeError)
    # Kept dense on request, the layer is not probed nor replaced, and inherit() succeeds.
    student = inherit(_Picky(), InherConfig(rank="full", exclude=["fc"]), calib=[torch.randn(4, 8)], progress=False)
    assert isinstance(student.fc, nn.Linear) and isinstance(student.head, InherBlock)


class _PaddedEncoder(nn.Module):
    """torch's encoder with nested tensors on and a key padding mask: its fast path runs on nested tensors."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.register_buffer("pad", torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] * 5 + [True]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, src_key_padding_mask=self.pad)


def test_nested_tensor_fast_path_calibrates_and_matches_on_real_positions() -> None:
    torch.manual_seed(0)
    teacher, x = _PaddedEncoder().eval(), torch.randn(3, 6, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's prototype warning for nested tensors
        want = outputs(teacher, x)
        student = inherit(teacher, InherConfig(rank="full"), calib=[x], progress=False).eval()
        got = outputs(student, x)
    # The fast path zeroes padded positions, the module-by-module path leaves them as computed: only the
    # real positions are the model's output.
    real = ~teacher.pad
    assert tm.rel_err(got[real], want[real]) <= 1e-4
