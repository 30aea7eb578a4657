"""torch.compile: inherited models trace into one graph, without graph breaks.

The graph-break check uses ``torch._dynamo.explain`` (Dynamo tracing only); the numerical check
compiles with ``backend="aot_eager"`` (Dynamo + AOTAutograd, no Inductor code generation), which
keeps the test fast on a CPU and free of a C++ compiler.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inhernet import InherBlock, InherConfig, inherit
from inhernet_bench.presets.mnist import MnistCNN

dynamo = pytest.importorskip("torch._dynamo")


@pytest.fixture(scope="module")
def student() -> nn.Module:
    torch.manual_seed(0)
    model = inherit(MnistCNN().eval(), InherConfig(rank=8, experts=3, init="svd"), progress=False)
    blocks = [m for m in model.modules() if isinstance(m, InherBlock)]
    assert {type(b).__name__ for b in blocks} == {"InherConv", "InherLinear"}
    assert all(b.experts == 3 and b.gate is not None for b in blocks)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # input-dependent gates, as after training
        for b in blocks:
            b.gate.weight.copy_(torch.randn(b.gate.weight.shape, generator=gen))
    return model


def test_inherited_model_has_no_graph_breaks(student):
    dynamo.reset()
    explanation = dynamo.explain(student)(torch.randn(4, 1, 28, 28))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_output_matches_eager(student):
    dynamo.reset()
    compiled = torch.compile(student, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), student(x), atol=1e-5, rtol=1e-5)
    dynamo.reset()
