"""The smollm2-bbc teacher's student (SmolLM2-135M, half its parameters) exported by ``export_hf`` and
loaded by ``transformers`` alone: the same logits and greedy tokens, at half the teacher's size on disk."""

from __future__ import annotations

import pytest
import torch

from hf_without_inhernet import case, load_without_inhernet, relative_error, tensor_shapes
from inhernet import InherConfig, export_hf, inherit
from inhernet_bench.presets.smollm2 import load_smollm2

TEXTS = ["The economy grew faster than expected in the third quarter, figures showed on Friday.",
         "The band will release its new album next month after a long tour of Europe and Asia."]


@pytest.mark.assets
@pytest.mark.filterwarnings("ignore:the causal-lm family:UserWarning")
def test_the_smollm2_student_loads_without_inhernet_at_half_the_size(tmp_path):
    teacher, tokenizer = load_smollm2()
    calib = [dict(tokenizer(TEXTS, return_tensors="pt", padding=True))]
    student = inherit(teacher, InherConfig(budget=0.5, init="svd"), calib, progress=False).eval()
    export_hf(student, tmp_path / "student", tokenizer=tokenizer)
    prompt = dict(tokenizer(["The prime minister said"], return_tensors="pt"))
    results = load_without_inhernet([case("smollm2", tmp_path / "student", "AutoModelForCausalLM", prompt,
                                          remote=True, new_tokens=8, tokenize=TEXTS[0])], tmp_path)
    with torch.no_grad():
        assert relative_error(results["smollm2/logits"], student(**prompt).logits) <= 1e-5
        assert torch.equal(results["smollm2/tokens"], student.generate(**prompt, max_new_tokens=8, do_sample=False))
    assert results["smollm2/tokenized"].tolist() == tokenizer(TEXTS[0])["input_ids"]
    stored = sum(torch.Size(s).numel() for s in tensor_shapes(tmp_path / "student").values())
    assert stored <= 0.55 * sum(p.numel() for p in teacher.parameters())
    assert tensor_shapes(tmp_path / "student.again") == tensor_shapes(tmp_path / "student")
