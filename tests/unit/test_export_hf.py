"""``export_hf``: students of Hugging Face models as directories that ``transformers`` loads without inhernet.

One table of tiny random architectures (llama, qwen2 with grouped-query attention and biases, gpt2's Conv1D,
bert, vit), each exported by the plain-config route (blocks dropped, every layer dense) and the remote-code
route (low-rank blocks, gated experts folded). All of them are loaded in ONE subprocess whose import system
refuses ``inhernet``: the logits equal the student's, a causal LM's greedy tokens too, and ``save_pretrained``
from the loaded model writes the same low-rank tensors back (the SVD-LLM #12 trap).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)

from hf_without_inhernet import case, load_without_inhernet, relative_error, tensor_shapes
from inhernet import InherBlock, InherConfig, inherit
from inhernet.blockdrop import without_blocks
from inhernet.deploy.hf import MODELING_NAME, export_hf

# tiny models at half the parameters: inherit warns of bottlenecks and a lowered rank floor, beside the point here
pytestmark = pytest.mark.filterwarnings("ignore:the budget cuts:UserWarning", "ignore:the causal-lm family:UserWarning")
VOCAB = 64
NEW_TOKENS = 4
TEXT = "the cat sat on a mat"


def _text(causal: bool) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, 8))
    mask = torch.ones_like(ids)
    if not causal:  # padding on a bidirectional encoder; causal LMs generate from unpadded prompts
        mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _llama():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config), _text(True)


def _qwen2():
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False)
    return Qwen2ForCausalLM(config), _text(True)


def _gpt2():
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=2, n_positions=32, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config), _text(True)


def _bert():
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=3)
    return BertForSequenceClassification(config), _text(False)


def _vit():
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                       intermediate_size=64, num_labels=5)
    return ViTForImageClassification(config), {"pixel_values": torch.randn(2, 3, 16, 16)}


ARCHITECTURES = {  # name: (teacher and batch, the Auto class that loads it, a causal LM)
    "llama": (_llama, "AutoModelForCausalLM", True),
    "qwen2": (_qwen2, "AutoModelForCausalLM", True),
    "gpt2": (_gpt2, "AutoModelForCausalLM", True),
    "bert": (_bert, "AutoModelForSequenceClassification", False),
    "vit": (_vit, "AutoModelForImageClassification", False),
}
CASES = [(arch, route) for arch in ARCHITECTURES for route in ("plain", "remote")]


def _student(arch: str, route: str):
    """The teacher's student by ``route``: "plain" drops block 1 and inherits at full rank (every block goes
    back to dense), "remote" inherits half the parameters with two gated experts (low-rank blocks)."""
    build, _, causal = ARCHITECTURES[arch]
    torch.manual_seed(0)
    teacher, batch = build()
    teacher.eval()
    calib = [batch]
    if route == "plain":
        student = inherit(without_blocks(teacher, [0, 2]), InherConfig(rank="full", init="svd"), calib, progress=False)
    else:
        student = inherit(teacher, InherConfig(budget=0.5, experts=2, drop_blocks=0.3 if causal else 0.0), calib,
                          progress=False)
    return student.eval(), batch, sum(p.numel() for p in teacher.parameters())


def _tokenizer() -> PreTrainedTokenizerFast:
    words = ["<pad>", "<unk>", "the", "cat", "sat", "on", "a", "mat"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case exported and loaded in one inhernet-free subprocess: the students, their batches, their
    teachers' parameter counts, what the subprocess measured, and the export directories' parent."""
    root = tmp_path_factory.mktemp("hf")
    students, batches, sizes, cases = {}, {}, {}, []
    for arch, route in CASES:
        name = f"{arch}-{route}"
        students[name], batches[name], sizes[name] = _student(arch, route)
        _, auto, causal = ARCHITECTURES[arch]
        export_hf(students[name], root / name, tokenizer=_tokenizer() if arch == "llama" else None)
        cases.append(case(name, root / name, auto, batches[name], remote=route == "remote",
                          new_tokens=NEW_TOKENS if causal else 0, tokenize=TEXT if arch == "llama" else None))
    return students, batches, sizes, load_without_inhernet(cases, root), root


@pytest.mark.parametrize("arch, route", CASES)
def test_transformers_alone_loads_the_student_with_its_outputs(exported, arch, route):
    students, batches, sizes, results, root = exported
    name, causal = f"{arch}-{route}", ARCHITECTURES[arch][2]
    student, batch, out = students[name], batches[name], root / name
    with torch.no_grad():
        want = student(**batch).logits
    assert relative_error(results[f"{name}/logits"], want) <= 1e-5
    assert relative_error(results[f"{name}/again"], want) <= 1e-5
    if causal:
        tokens = student.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert torch.equal(results[f"{name}/tokens"], tokens)
    config = json.loads((out / "config.json").read_text())
    low_rank = [n for n, m in student.named_modules() if isinstance(m, InherBlock)]
    if route == "plain":
        assert low_rank  # full-rank blocks, which the export returned to dense layers
        assert not (out / MODELING_NAME).exists() and "auto_map" not in config and "inhernet_low_rank" not in config
        assert config.get("num_hidden_layers", config.get("n_layer")) == 2
    else:
        base, modeling = type(student), (out / MODELING_NAME).read_text()
        assert f"from {base.__module__} import {base.__name__} as Base" in modeling and len(modeling.splitlines()) < 80
        ranks = config["inhernet_low_rank"]
        assert ranks and set(ranks) <= set(low_rank)
        # the student's factors, not dense layers (the file's names may be the architecture's checkpoint names)
        shapes = tensor_shapes(out)
        assert sum(k.endswith(".down.weight") for k in shapes) == len(ranks)
        assert not any(k.endswith((".gate.weight", ".gate.bias")) for k in shapes)  # the two experts folded
        assert sum(math.prod(s) for s in shapes.values()) < sizes[name]
    # save_pretrained from the loaded model writes the same tensors back: low rank, not full size
    assert tensor_shapes(root / f"{name}.again") == tensor_shapes(out)
    if arch == "llama":
        assert results[f"{name}/tokenized"].tolist() == _tokenizer()(TEXT)["input_ids"]


# -- bad input and atomic writes -----------------------------------------------------------------------
def _teacher():
    torch.manual_seed(0)
    return _bert()[0].eval()


def test_a_student_of_no_transformers_model_is_refused_naming_the_formats_that_work(tmp_path):
    with pytest.raises(ValueError, match=r"--format hf.*--format pt2.*--format onnx"):
        export_hf(torch.nn.Sequential(torch.nn.Linear(4, 4)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_non_empty_directory_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="overwrite"):
        export_hf(_teacher(), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export_hf(_teacher(), out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old directory left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_hf(_teacher(), empty) / "model.safetensors").is_file()


class _FailingTokenizer:
    def save_pretrained(self, directory):
        (Path(directory) / "tokenizer.json").write_text("{")
        raise OSError("disk full")


def test_a_failed_export_leaves_nothing_behind_and_the_old_directory_whole(tmp_path):
    with pytest.raises(OSError, match="disk full"):
        export_hf(_teacher(), tmp_path / "new", tokenizer=_FailingTokenizer())
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    with pytest.raises(OSError, match="disk full"):
        export_hf(_teacher(), old, tokenizer=_FailingTokenizer(), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"] and [p.name for p in old.iterdir()] == ["keep.txt"]


def test_a_tokenizer_without_save_pretrained_is_refused(tmp_path):
    with pytest.raises(TypeError, match="tokenizer"):
        export_hf(_teacher(), tmp_path / "out", tokenizer=object())


def test_input_dependent_gates_ask_for_compact_and_the_student_is_not_modified(tmp_path):
    student, _, _ = _student("bert", "remote")
    block = next(m for m in student.modules() if isinstance(m, InherBlock))
    with torch.no_grad():
        block.gate.weight.normal_()
    with pytest.raises(ValueError, match=r"calib.*compact"):
        export_hf(student, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert all(m.experts == 2 for m in student.modules() if isinstance(m, InherBlock))


def test_a_width_the_config_cannot_express_is_refused(tmp_path):
    teacher = _teacher()
    layer = teacher.bert.encoder.layer[0]
    layer.intermediate.dense = torch.nn.Linear(32, 48)  # a pruned FFN in one block: BertConfig has one width
    layer.output.dense = torch.nn.Linear(48, 32)
    with pytest.raises(ValueError, match=r"intermediate\.dense.*BertConfig.*--format pt2"):
        export_hf(teacher, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_class_no_auto_class_builds_is_refused(tmp_path):
    student, _, _ = _student("bert", "remote")
    student.__class__ = type("Custom", (BertForSequenceClassification,), {})
    with pytest.raises(ValueError, match="no transformers AutoModel class builds Custom"):
        export_hf(student, tmp_path / "out")
