"""GGUF export (inhernet.deploy.gguf): read back with gguf.GGUFReader, every tensor and the metadata compared."""

from __future__ import annotations

import copy
import json

import gguf
import numpy as np
import pytest
import torch

from inhernet import InherConfig, inherit
from inhernet.deploy import export_gguf
from inhernet.deploy.compact import densify
from inhernet.deploy.gguf import _permute
from inhernet.layers import InherBlock
from inhernet.stack import replace_module
from tiny_models import bert_tiny, llama_tiny


def _read(path) -> tuple[dict, dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    return fields, {t.name: np.array(t.data) for t in reader.tensors}


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of llama.cpp's rotary row order: back to Hugging Face's halves."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dense_copy(student):
    dense = copy.deepcopy(student)
    for name, block in [(n, m) for n, m in dense.named_modules() if isinstance(m, InherBlock)]:
        dense = replace_module(dense, name, densify(block))
    return dense


@pytest.fixture(scope="module")
def student():
    teacher, batch = llama_tiny()
    cfg = InherConfig(budget=0.6, init="svd", drop_blocks=0.5, seed=0)
    calib = [torch.randint(0, 100, (4, 8)) for _ in range(2)]
    return inherit(teacher, cfg, calib=calib, progress=False).eval(), batch


def test_every_tensor_and_the_metadata_read_back(student, tmp_path):
    model, _ = student
    blocks = len(model.model.layers)
    assert blocks < 4 and any(isinstance(m, InherBlock) for m in model.modules())  # blocks dropped, ranks cut
    with pytest.warns(UserWarning, match=r"densified .* parameters"):
        path = export_gguf(model, tmp_path / "s.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["s.gguf"]
    fields, tensors = _read(path)
    config = model.config
    assert fields["general.architecture"] == "llama"
    want = {"block_count": blocks, "embedding_length": 32, "feed_forward_length": 64, "attention.head_count": 4,
            "attention.head_count_kv": 2, "rope.dimension_count": 8, "context_length": 32}
    assert {k: fields[f"llama.{k}"] for k in want} == want
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)
    assert fields["llama.rope.freq_base"] == pytest.approx(10000.0)

    dense = _dense_copy(model).state_dict()
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd
    assert len(tensors) == 2 + 9 * blocks
    torch.testing.assert_close(torch.from_numpy(tensors["token_embd.weight"]), dense["model.embed_tokens.weight"])
    torch.testing.assert_close(torch.from_numpy(tensors["output_norm.weight"]), dense["model.norm.weight"])
    hf = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(blocks):
        for short, long in hf.items():
            got = torch.from_numpy(tensors[f"blk.{i}.{short}.weight"])
            if short in ("attn_q", "attn_k"):
                got = _unpermute(got, got.shape[0] // 8)
            torch.testing.assert_close(got, dense[f"model.layers.{i}.{long}.weight"], rtol=0, atol=0)


def test_the_rotary_permutation_is_llama_cpps(student):
    """Row r of a head in llama.cpp's order is row (r % 2) * half + r // 2 of Hugging Face's."""

    w = torch.arange(16.0).reshape(16, 1)  # two heads of 8 rows
    assert _permute(w, 2)[:8, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert torch.equal(_unpermute(_permute(w, 2), 2), w)


def test_non_llama_students_are_refused_naming_the_formats_that_work(tmp_path):
    model, _ = bert_tiny()
    with pytest.raises(ValueError, match=r"llama-family causal LMs.*pt2, onnx or hf"):
        export_gguf(model, tmp_path / "b.gguf")
    assert not list(tmp_path.iterdir())


def test_input_dependent_gates_are_not_folded_silently(tmp_path):
    teacher, _ = llama_tiny()
    model = inherit(teacher, InherConfig(budget=0.6, init="svd", experts=3, drop_blocks=0), progress=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, InherBlock) and m.gate is not None:
                m.gate.weight.normal_()
    with pytest.raises(ValueError, match="calib"):
        export_gguf(model, tmp_path / "g.gguf")
    assert not list(tmp_path.iterdir())


def test_an_untied_head_is_written_as_output(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=False,
    ))
    fields, tensors = _read(export_gguf(model, tmp_path / "t.gguf"))
    assert len(tensors) == 3 + 9 * 2 and fields["llama.feed_forward_length"] == 48
    torch.testing.assert_close(torch.from_numpy(tensors["output.weight"]), model.lm_head.weight.detach(), rtol=0, atol=0)


def test_rotary_embeddings_in_llama_cpps_layout_give_the_students_queries(student, tmp_path):
    """llama.cpp's llama rotates adjacent pairs (2i, 2i+1), Hugging Face's the halves (i, i + d/2): with the
    rows permuted, the queries and keys llama.cpp computes are the student's (so are the attention scores)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    model, _ = student
    with pytest.warns(UserWarning, match="densified"):
        _, tensors = _read(export_gguf(model, tmp_path / "s.gguf"))
    layer, d = _dense_copy(model).model.layers[0].self_attn, 8
    x, positions = torch.randn(1, 5, 32), torch.arange(5)[None]
    cos, sin = LlamaRotaryEmbedding(model.config)(x, positions)
    theta = 10000.0 ** (-torch.arange(0, d, 2) / d)
    angle = positions[0, :, None, None] * theta  # (positions, 1, d/2)
    for proj, name in ((layer.q_proj, "attn_q"), (layer.k_proj, "attn_k")):
        heads = proj.out_features // d
        hf = proj(x).view(1, 5, heads, d).transpose(1, 2)
        hf, _ = apply_rotary_pos_emb(hf, hf, cos, sin)  # (1, heads, 5, d)
        cpp = (x @ torch.from_numpy(tensors[f"blk.0.{name}.weight"]).T).view(5, heads, d // 2, 2)
        even, odd = cpp[..., 0], cpp[..., 1]
        cpp = torch.stack([even * angle.cos() - odd * angle.sin(), even * angle.sin() + odd * angle.cos()], -1)
        want = _permute(hf[0].transpose(0, 1).reshape(5, heads * d).T, heads).T  # HF's rows in llama.cpp's order
        torch.testing.assert_close(cpp.reshape(5, heads * d), want.detach(), rtol=1e-5, atol=1e-5)


def test_a_half_precision_llama_keeps_f16_matrices_and_f32_norms(tmp_path):
    model, _ = llama_tiny()
    fields, tensors = _read(export_gguf(model.half(), tmp_path / "h.gguf"))
    assert fields["general.file_type"] == 1  # MOSTLY_F16
    assert tensors["blk.0.ffn_up.weight"].dtype == np.float16 and tensors["blk.0.attn_norm.weight"].dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(tensors["blk.0.ffn_up.weight"]), model.model.layers[0].mlp.up_proj.weight,
                               rtol=0, atol=0)


def _bpe_tokenizer(digits: bool):
    """A byte-level BPE tokenizer trained here on a few sentences (SmolLM's pre-tokenizer with ``digits``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) \
        if digits else byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the cat sat on the mat 2024", "shares of the bank rose 12 per cent"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>")


def _llama_for(tokenizer, rows_extra: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer) + rows_extra, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )).eval()


@pytest.mark.parametrize("digits, pre", [(True, "smollm"), (False, "gpt-2")])
def test_the_tokenizer_is_written_as_llama_cpps_bpe_vocabulary(tmp_path, digits, pre):
    tokenizer = _bpe_tokenizer(digits)
    model = _llama_for(tokenizer, rows_extra=3)  # embedding rows past the vocabulary, as models pad them
    fields, _ = _read(export_gguf(model, tmp_path / "t.gguf", tokenizer=tokenizer))
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == pre
    tokens, kinds, vocab = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"], tokenizer.get_vocab()
    assert len(tokens) == len(kinds) == model.config.vocab_size  # one token per embedding row
    assert all(tokens[i] == token for token, i in vocab.items())
    special = [vocab["<|endoftext|>"], vocab["<|im_start|>"]]
    assert [kinds[i] for i in special] == [3, 3] and kinds[-3:] == [5, 5, 5]  # CONTROL; UNUSED padding rows
    assert sum(k == 1 for k in kinds) == len(vocab) - 2  # every other token NORMAL
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (special[1], special[0])
    assert fields["tokenizer.ggml.add_bos_token"] is False  # this tokenizer adds no BOS


def test_a_tokenizer_llama_cpp_cannot_read_is_refused_before_writing(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    with pytest.raises(ValueError, match=r"byte-level BPE.*WordLevel.*without tokenizer="):
        export_gguf(_llama_for(tokenizer), tmp_path / "w.gguf", tokenizer=tokenizer)
    assert not list(tmp_path.iterdir())


def test_llama_cpp_runs_the_file_and_gives_the_students_logits(tmp_path):
    """Optional (llama-cpp-python builds llama.cpp from source, so `make test` does not install it): the file
    loads in llama.cpp, which tokenizes as the tokenizer does and computes the model's logits."""
    llama_cpp = pytest.importorskip("llama_cpp")
    tokenizer = _bpe_tokenizer(digits=True)
    model = _llama_for(tokenizer)
    path = export_gguf(model, tmp_path / "t.gguf", tokenizer=tokenizer)
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False)
    text = "the bank sat on 2024 shares"
    ids = tokenizer(text)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    llm.eval(ids)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(np.array(llm.scores[: len(ids)]), want, rtol=1e-3, atol=1e-3)
