"""ONNX export (inhernet.deploy.export) checked in onnxruntime."""

from __future__ import annotations

import warnings

# The dev extra installs onnxruntime and onnxscript: these tests run in `make test`, never skip.
import onnxruntime as ort
import pytest
import torch
from torch import nn

from inhernet import InherBlock, InherConfig, inherit
from inhernet.deploy import export_onnx, merge_experts, onnx_inputs, verify_onnx
from tiny_models import clip_model_tiny, gpt2_tiny, strided_cnn, two_towers

TOL = 1e-4


def small_cnn() -> nn.Module:
    return strided_cnn(width=16)


def trained_gates(model: nn.Module) -> nn.Module:
    """Give every gate input-dependent logits so the export has to carry the gate computation."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, InherBlock) and m.gate is not None:
                m.gate.weight.copy_(torch.randn(m.gate.weight.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def cnn_student() -> nn.Module:
    student = inherit(small_cnn(), InherConfig(rank=6, experts=3, init="svd"), progress=False)
    kinds = {type(m).__name__ for m in student.modules() if isinstance(m, InherBlock)}
    assert kinds == {"InherConv", "InherLinear"}
    return trained_gates(student)


def test_inherited_cnn_matches_in_onnxruntime_with_dynamic_batch(cnn_student, tmp_path):
    path = export_onnx(cnn_student, torch.randn(2, 3, 16, 16), tmp_path / "cnn.onnx")
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["cnn.onnx"]
    assert verify_onnx(path, cnn_student, torch.randn(5, 3, 16, 16)) <= TOL
    assert verify_onnx(path, cnn_student, (torch.randn(1, 3, 16, 16), torch.zeros(1))) <= TOL


def test_static_batch_is_fixed(cnn_student, tmp_path):
    path = export_onnx(cnn_student, torch.randn(2, 3, 16, 16), tmp_path / "s.onnx", dynamic_batch=False)
    shape = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    assert shape == [2, 3, 16, 16]
    assert verify_onnx(path, cnn_student, torch.randn(2, 3, 16, 16)) <= TOL


def test_merged_model_exports(cnn_student, tmp_path):
    import copy

    merged = merge_experts(copy.deepcopy(cnn_student), calib=[torch.randn(8, 3, 16, 16)])
    path = export_onnx(merged, torch.randn(2, 3, 16, 16), tmp_path / "m.onnx")
    assert verify_onnx(path, merged, torch.randn(3, 3, 16, 16)) <= TOL


@pytest.fixture(scope="module")
def bert_student() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    teacher = transformers.BertForSequenceClassification(config).eval()
    student = inherit(teacher, InherConfig(rank=8, experts=3, init="svd"), progress=False)
    kinds = {type(m).__name__ for m in student.modules() if isinstance(m, InherBlock)}
    assert {"InherLinear", "InherEmbedding"} <= kinds
    return trained_gates(student)


def padded(batch: int, length: int) -> dict[str, torch.Tensor]:
    """Token ids with padding at every edge: right-padded rows, left-padded rows, one pad at the last and
    at the first position, one full row. Were the padding-mask lookup's indices ever negative (the case
    the exporter's ``aten::index`` warning is about), some of these rows would mask the wrong tokens."""
    ids = torch.randint(0, 100, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    mask[1, : length // 2] = 0
    mask[2, -1] = 0
    mask[3, 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_tiny_bert_exports_with_dynamic_batch_and_sequence_by_default(bert_student, tmp_path):
    ids = torch.randint(0, 100, (2, 12))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(2, dtype=torch.long)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(bert_student, example, tmp_path / "bert.onnx")
    assert not [w for w in caught if "aten::index" in str(w.message)], "the aten::index note is explained, not shown"
    inputs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    assert [(i.name, i.shape) for i in inputs] == [(n, ["batch", "sequence"]) for n in ("input_ids", "attention_mask")]
    for batch, length in ((5, 4), (4, 12), (6, 40)):  # shorter, as long as and longer than the example
        assert verify_onnx(path, bert_student, padded(batch, length)) <= TOL, (batch, length)


def test_the_sequence_length_is_fixed_where_asked(bert_student, tmp_path):
    ids = torch.randint(0, 100, (2, 12))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    fixed = export_onnx(bert_student, example, tmp_path / "f.onnx", dynamic_sequence=False)
    session = ort.InferenceSession(str(fixed), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", 12]] * 2
    assert verify_onnx(fixed, bert_student, padded(4, 12)) <= TOL
    with pytest.raises(Exception, match="INVALID_ARGUMENT"):
        verify_onnx(fixed, bert_student, padded(4, 8))
    renamed = export_onnx(bert_student, example, tmp_path / "r.onnx", dynamic_axes={"input_ids": {1: "tokens"}})
    session = ort.InferenceSession(str(renamed), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", "tokens"], ["batch", "sequence"]]


def test_a_language_model_exports_with_a_dynamic_sequence(tmp_path):
    teacher, ids = gpt2_tiny()  # a plain tensor of token ids: its logits follow the sequence
    path = export_onnx(teacher, ids, tmp_path / "lm.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape == ["batch", "sequence", 100]
    for length in (3, 15):
        assert verify_onnx(path, teacher, torch.randint(0, 100, (3, length))) <= TOL


def test_failed_export_leaves_the_old_file_and_no_temp(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(Broken(), torch.zeros(1, 2), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_bad_inputs_are_explained(cnn_student, tmp_path):
    with pytest.raises(TypeError, match="example_inputs"):
        export_onnx(cnn_student, "not a batch", tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="dynamic_axes"):
        export_onnx(
            cnn_student, torch.zeros(1, 3, 16, 16), tmp_path / "x.onnx", dynamic_axes={"pixels": {2: "h"}}
        )
    assert list(onnx_inputs({"a": torch.zeros(1), "labels": torch.zeros(1)})) == ["a"]


def test_dynamo_exporter_when_onnxscript_is_installed(cnn_student, tmp_path):
    import onnxscript  # noqa: F401 - the torch.export-based exporter needs it (the deploy extra installs it)
    path = export_onnx(cnn_student, torch.randn(2, 3, 16, 16), tmp_path / "d.onnx", dynamo=True)
    assert verify_onnx(path, cnn_student, torch.randn(3, 3, 16, 16)) <= TOL


def test_export_and_verify_give_every_module_its_mode_back(tmp_path):
    """Export traces in eval mode; afterwards each module has its own flag again (a training model with a
    frozen part keeps it frozen), also when the export fails."""
    model = small_cnn().train()
    frozen = next(iter(model.children())).eval()  # e.g. a frozen feature extractor
    before = {name: m.training for name, m in model.named_modules()}
    assert model.training and not frozen.training
    path = export_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "m.onnx")
    assert {name: m.training for name, m in model.named_modules()} == before
    verify_onnx(path, model, torch.randn(2, 3, 16, 16))
    assert {name: m.training for name, m in model.named_modules()} == before
    with pytest.raises(RuntimeError, match="channels"):
        export_onnx(model, torch.randn(2, 5, 16, 16), tmp_path / "bad.onnx")  # wrong channels: fails in tracing
    assert {name: m.training for name, m in model.named_modules()} == before


def test_a_dual_encoder_exports_both_embeddings(tmp_path):
    """A dual encoder has no logits: its graph outputs are the two towers' embeddings, checked together."""
    teacher, batch = two_towers()
    student = inherit(teacher, InherConfig(budget=0.5, experts=1), calib=[batch], progress=False)
    path = export_onnx(student, batch, tmp_path / "dual.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["image_embeds", "text_embeds"]
    assert verify_onnx(path, student, batch) < 1e-5
    fewer = {k: v[:2] for k, v in batch.items()}  # the batch axis is dynamic
    image, _ = session.run(None, {k: v.numpy() for k, v in fewer.items()})
    assert image.shape[0] == 2


def test_a_weight_read_outside_forward_names_the_export_that_works(tmp_path):
    """CLIP reads its position embedding's ``.weight.shape``: the TorchScript tracer cannot follow a computed
    weight, and the error says which export can (pt2 traces it: test_export_pt2)."""
    teacher, batch = clip_model_tiny()
    student = inherit(teacher, InherConfig(budget=0.5, experts=1), calib=[batch], progress=False)
    with pytest.raises(ValueError, match=r"export_pt2 \(--format pt2\).*exclude="):
        export_onnx(student, batch, tmp_path / "clip.onnx")
    assert not (tmp_path / "clip.onnx").exists()
