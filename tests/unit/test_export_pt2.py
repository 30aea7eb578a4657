"""torch.export programs (inhernet.deploy.pt2): outputs equal the student's, dynamic batch, loadable without inhernet."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from hf_without_inhernet import REFUSE_INHERNET
from inhernet import InherBlock, InherConfig, inherit
from inhernet.deploy import export_pt2, verify_pt2
from tiny_models import bert_tiny, clip_model_tiny, strided_cnn, two_towers

TOL = 1e-5

# Runs the program without inhernet.
NO_INHERNET = REFUSE_INHERNET + """
import sys, torch
program = torch.export.load(sys.argv[1]).module()
inputs = torch.load(sys.argv[2])
torch.save(program(*inputs), sys.argv[3])
"""


def run_without_inhernet(program, inputs: list[torch.Tensor], tmp_path) -> torch.Tensor:
    torch.save(inputs, tmp_path / "in.pt")
    proc = subprocess.run(
        [sys.executable, "-c", NO_INHERNET, str(program), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return torch.load(tmp_path / "out.pt")


@pytest.fixture(scope="module")
def cnn_student() -> nn.Module:
    student = inherit(strided_cnn(width=16), InherConfig(rank=6, experts=3, init="svd"), progress=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # input-dependent gates: the program has to carry the gate computation
        for m in student.modules():
            if isinstance(m, InherBlock) and m.gate is not None:
                m.gate.weight.copy_(torch.randn(m.gate.weight.shape, generator=gen))
    return student


def test_gated_student_equals_its_program_at_any_batch_without_inhernet(cnn_student, tmp_path):
    cnn_student.train()
    path = export_pt2(cnn_student, torch.randn(1, 3, 16, 16), tmp_path / "cnn.pt2")  # batch 1 stays symbolic
    assert [p.name for p in tmp_path.iterdir()] == ["cnn.pt2"] and cnn_student.training  # mode restored
    for rows in (1, 5):
        assert verify_pt2(path, cnn_student, torch.randn(rows, 3, 16, 16)) <= TOL
    x = torch.randn(3, 3, 16, 16)
    got = run_without_inhernet(path, [x], tmp_path)
    with torch.no_grad():
        want = cnn_student.eval()(x)
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_hugging_face_student_takes_its_dict_inputs_by_position(tmp_path):
    teacher, batch = bert_tiny()
    student = inherit(teacher, InherConfig(budget=0.6, experts=2, init="svd"), progress=False).eval()
    path = export_pt2(student, batch, tmp_path / "bert.pt2")
    assert verify_pt2(path, student, batch) <= TOL
    wider = {k: torch.cat([v, v, v]) for k, v in batch.items()}
    assert verify_pt2(path, student, wider) <= TOL


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y if y.sum().item() > 0 else -y  # a branch on a value: torch.export cannot trace it


def test_a_tracing_failure_names_the_layer_and_the_op(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), DataDependent()))
    with pytest.raises(ValueError, match=r"data-dependent.*in layer 1\.1 \(DataDependent, .*test_export_pt2\.py"):
        export_pt2(model, torch.randn(2, 4), tmp_path / "bad.pt2")
    assert not list(tmp_path.iterdir())


def test_bad_arguments_name_what_would_work(tmp_path):
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        export_pt2("model", torch.randn(2, 4), tmp_path / "x.pt2")
    with pytest.raises(TypeError, match="example_inputs must be a tensor"):
        export_pt2(nn.Linear(4, 4), [1, 2], tmp_path / "x.pt2")


@pytest.mark.parametrize("factory", [two_towers, clip_model_tiny])
def test_a_dual_encoder_program_returns_both_embeddings(factory, tmp_path):
    """Both towers' embeddings come out (CLIP too, whose code reads a factorised embedding's weight)."""
    teacher, batch = factory()
    student = inherit(teacher, InherConfig(budget=0.5, experts=1), calib=[batch], progress=False)
    path = export_pt2(student, batch, tmp_path / "dual.pt2")
    assert verify_pt2(path, student, batch) < 1e-5
    image, text = torch.export.load(str(path)).module()(*(v[:2] for v in batch.values()))
    assert image.shape[0] == text.shape[0] == 2
