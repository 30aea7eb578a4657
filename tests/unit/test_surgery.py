"""inherit(): the teacher is untouched, the student is independent and follows its dtype and device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tiny_models as tm
from inhernet import InherBlock, InherConfig, inherit
from inhernet.experimental import ExperimentalConfig

TEACHERS = {
    "mlp": tm.mlp,
    "cnn": tm.cnn,
    "conv1d": tm.conv1d_net,
    "embedding": tm.embed_net,
    "bert": tm.bert_tiny,
}


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("name", list(TEACHERS))
def test_teacher_unchanged_and_student_independent(name: str) -> None:
    teacher, batch = TEACHERS[name]()
    teacher.train()
    before, types = tm.state_copy(teacher), [(n, type(m)) for n, m in teacher.named_modules()]
    out_before = tm.run(teacher.eval(), batch)
    teacher.train()

    cfg = InherConfig(rank=0.5, experts=1, init="whiten")
    student = inherit(teacher, cfg, calib=[batch, batch], progress=False)
    assert student is not teacher
    assert tm.same_state(teacher.state_dict(), before)
    assert [(n, type(m)) for n, m in teacher.named_modules()] == types
    assert teacher.training and _hooks(teacher) == 0
    assert all(m.training for m in student.modules()), "the student keeps the teacher's mode"
    assert any(isinstance(m, InherBlock) for m in student.modules())

    # No storage is shared: training the student cannot touch the teacher.
    teacher_ptrs = {t.data_ptr() for t in teacher.state_dict().values()}
    assert not teacher_ptrs & {t.data_ptr() for t in student.state_dict().values()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert tm.same_state(teacher.state_dict(), before)
    assert torch.equal(tm.run(teacher.eval(), batch), out_before)


FLOAT64 = {"mlp": tm.mlp, "cnn": tm.cnn, "conv1d": tm.conv1d_net, "embedding": tm.embed_net}


@pytest.mark.parametrize("init", ["svd", "whiten"])
@pytest.mark.parametrize("name", list(FLOAT64))
def test_float64_teacher_gives_float64_blocks_exact_to_1e10(name: str, init: str) -> None:
    teacher, batch = FLOAT64[name]()
    teacher = teacher.double()
    if batch.is_floating_point():
        batch = batch.double()
    student = inherit(teacher, InherConfig(rank="full", experts=3, init=init), calib=[batch], progress=False)
    blocks = [m for m in student.modules() if isinstance(m, InherBlock)]
    assert blocks
    assert all(p.dtype == torch.float64 for p in student.parameters())
    assert tm.rel_err(tm.run(student.eval(), batch), tm.run(teacher, batch)) <= 1e-10


def test_bfloat16_teacher_gives_bfloat16_blocks() -> None:
    teacher, x = tm.mlp()
    teacher = teacher.to(torch.bfloat16)
    x = x.to(torch.bfloat16)
    student = inherit(teacher, InherConfig(rank="full", init="whiten"), calib=[x], progress=False)
    assert all(p.dtype == torch.bfloat16 for p in student.parameters())
    assert tm.rel_err(tm.run(student, x).float(), tm.run(teacher, x).float()) <= 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("init", ["svd", "whiten"])
def test_cuda_teacher_gives_cuda_blocks(init: str) -> None:
    teacher, batch = tm.cnn()
    teacher, batch = teacher.cuda(), batch.cuda()
    student = inherit(teacher, InherConfig(rank="full", init=init), calib=[batch], progress=False)
    assert all(p.is_cuda for p in student.parameters())
    assert tm.rel_err(tm.run(student, batch), tm.run(teacher, batch)) <= 1e-4


@pytest.mark.parametrize("training", [False, True])
def test_every_student_module_follows_the_teacher_mode(training: bool) -> None:
    teacher, x = tm.cnn()
    teacher.train(training)
    student = inherit(teacher, InherConfig(rank="full", init="whiten"), calib=[x], progress=False)
    assert {m.training for m in student.modules()} == {training}


def test_random_init_same_structure_not_the_teacher() -> None:
    teacher, x = tm.mlp()
    svd = inherit(teacher, InherConfig(rank=4, experts=1, init="svd"), progress=False)
    rnd = inherit(teacher, ExperimentalConfig(rank=4, experts=1, init="random"), progress=False)
    assert svd.inhernet_plan.ranks() == rnd.inhernet_plan.ranks()
    assert [(n, p.shape) for n, p in svd.named_parameters()] == [
        (n, p.shape) for n, p in rnd.named_parameters()
    ]
    assert tm.rel_err(tm.run(rnd, x), tm.run(teacher, x)) > 0.1


def test_plan_reuse_builds_the_same_structure() -> None:
    teacher, x = tm.cnn()
    first = inherit(teacher, InherConfig(rank=2, experts=1, init="whiten"), calib=[x], progress=False)
    again = inherit(
        teacher, ExperimentalConfig(rank=2, experts=1, init="random"), plan=first.inhernet_plan, progress=False
    )
    assert [(n, p.shape) for n, p in first.named_parameters()] == [
        (n, p.shape) for n, p in again.named_parameters()
    ]
