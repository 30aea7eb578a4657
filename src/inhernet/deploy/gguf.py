"""GGUF files (llama.cpp) of llama-family causal-LM students, via the ``gguf`` package (docs/formats/gguf.md)."""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_path
from ..layers import InherBlock
from ..stack import replace_module
from .compact import densify
from .merge import merge_experts

__all__ = ["TokenizerNotWritable", "export_gguf"]

_OTHER_FORMATS = "pt2, onnx or hf (inhernet export --format ...)"


class TokenizerNotWritable(ValueError):
    """The tokenizer is not one llama.cpp's byte-level BPE vocabulary can hold (raised before anything is written)."""


def export_gguf(model: nn.Module, path: str | os.PathLike[str], tokenizer: Any = None) -> Path:
    """Write the llama-family causal LM ``model`` (a student or any ``LlamaForCausalLM``) as a GGUF file.

    ``tokenizer`` (a Hugging Face byte-level BPE tokenizer, such as SmolLM2's or GPT-2's) is written with it,
    which llama.cpp needs to run the file; without one the file holds the weights and hyperparameters only.

    Raises:
        ValueError: ``model`` is not a llama causal LM GGUF can express (the message says why and which
            formats work), its gates depend on their input (fold them with ``merge_experts(model, calib)``),
            or ``tokenizer`` is not one llama.cpp's byte-level BPE reads.
    """
    config = _llama_config(model)
    dense = _standard(model)
    tensors = _tensors(dense, config)
    vocab = None if tokenizer is None else _vocabulary(tokenizer, tensors["token_embd.weight"].shape[0])
    import gguf

    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        _metadata(writer, config, tensors, len(dense.model.layers))
        if vocab is not None:
            _add_vocabulary(writer, tokenizer, *vocab)
        for name, array in tensors.items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


def _llama_config(model: nn.Module) -> Any:
    """``model.config``, once checked to describe what GGUF's llama architecture computes."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind != "llama" or not hasattr(model, "lm_head"):
        raise ValueError(
            f"GGUF export writes llama-family causal LMs; {type(model).__name__} (model_type {kind!r}) is not one: "
            f"export it as {_OTHER_FORMATS}"
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default" or config.hidden_act != "silu":
        raise ValueError(
            f"GGUF export writes llama models with plain rotary embeddings and SiLU; this one has rope {rope} and "
            f"{config.hidden_act}: export it as {_OTHER_FORMATS}"
        )
    return config


def _standard(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with standard layers only: experts folded, low-rank blocks densified."""
    model = merge_experts(copy.deepcopy(model))  # refuses gates that depend on their input: not exact
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, InherBlock)}
    before = sum(p.numel() for p in model.parameters())
    for name, block in blocks.items():
        model = replace_module(model, name, densify(block))
    added = sum(p.numel() for p in model.parameters()) - before
    if blocks:
        size = next(model.parameters()).element_size()
        warnings.warn(
            f"GGUF has no low-rank layers: {len(blocks)} rank-cut layers densified (W = B A), {added:+,} "
            f"parameters ({added * size / 1e6:+.1f} MB); pt2, onnx and hf keep them factorised", stacklevel=3,
        )
    return model


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The rows of a q/k projection in llama.cpp's rotary layout (``convert_hf_to_gguf.LlamaModel.permute``)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model: nn.Module, config: Any) -> dict[str, Any]:
    """llama.cpp's name -> array of every weight (``output`` left out when tied to ``token_embd``)."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, len(model.model.layers))
    state = model.state_dict()
    if torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
        del state["lm_head.weight"]  # llama.cpp reads token_embd for a missing output
    head_dim = _head_dim(config)
    tensors = {}
    for key, t in state.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"GGUF's llama has no tensor for {key}: export this student as {_OTHER_FORMATS}")
        if ".attn_q." in name or ".attn_k." in name:
            t = _permute(t, t.shape[0] // head_dim)
        half = t.dtype == torch.float16 and t.dim() > 1  # llama.cpp's converter keeps norms and biases in F32
        tensors[name] = (t if half else t.float()).detach().cpu().numpy()
    return tensors


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _metadata(writer: Any, config: Any, tensors: dict[str, Any], blocks: int) -> None:
    """The llama hyperparameters llama.cpp reads, from the tensors (a pruned width differs from the config)."""
    widths = {(tensors[f"blk.{i}.attn_q.weight"].shape[0], tensors[f"blk.{i}.attn_k.weight"].shape[0],
               tensors[f"blk.{i}.ffn_up.weight"].shape[0]) for i in range(blocks)}
    if len(widths) != 1:
        raise ValueError(f"the blocks have different widths {sorted(widths)} (pruned): GGUF's llama needs one; "
                         f"export this student as {_OTHER_FORMATS}")
    (q_rows, k_rows, ffn), head_dim = widths.pop(), _head_dim(config)
    rope = getattr(config, "rope_parameters", None) or {}
    vocab, hidden = tensors["token_embd.weight"].shape
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(hidden)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(q_rows // head_dim)
    writer.add_head_count_kv(k_rows // head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(vocab)
    writer.add_file_type(int(tensors["token_embd.weight"].dtype.itemsize == 2))  # ALL_F32 0, MOSTLY_F16 1


def _pre_tokenizer(spec: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer: ``gpt-2`` (byte level) or ``smollm`` (digits, then bytes)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if spec.get("model", {}).get("type") == "BPE" and steps[-1].get("use_regex", True):
        if kinds == ["ByteLevel"]:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"
    raise TokenizerNotWritable(
        f"GGUF export writes byte-level BPE tokenizers (GPT-2's or SmolLM's pre-tokenizer); this one is a "
        f"{spec.get('model', {}).get('type')} model split by {kinds}: call export_gguf without tokenizer= (weights "
        f"only), or export as hf"
    )


def _vocabulary(tokenizer: Any, rows: int) -> tuple[str, list[str], list[int], list[str]]:
    """The pre-tokenizer's name, the token of every embedding row, its llama.cpp type, and the BPE merges."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerNotWritable(f"GGUF export reads fast (tokenizers) tokenizers; got a {type(tokenizer).__name__}: "
                                   "load it with AutoTokenizer.from_pretrained(..., use_fast=True), or leave it out")
    spec = json.loads(backend.to_str())
    pre = _pre_tokenizer(spec)
    ids = tokenizer.get_vocab()
    if max(ids.values()) >= rows:
        raise ValueError(f"the tokenizer has {max(ids.values()) + 1} tokens and the model {rows} embedding rows: "
                         "pass the model's own tokenizer")
    from gguf import TokenType

    tokens, kinds = [f"[PAD{i}]" for i in range(rows)], [TokenType.UNUSED] * rows  # rows past the vocabulary
    added = {i: TokenType.CONTROL if t.special else TokenType.USER_DEFINED for i, t in
             tokenizer.added_tokens_decoder.items()}
    for token, i in ids.items():
        tokens[i], kinds[i] = token, added.get(i, TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return pre, tokens, kinds, merges


def _add_vocabulary(writer: Any, tokenizer: Any, pre: str, tokens: list[str], kinds: list[int],
                    merges: list[str]) -> None:
    """The tokenizer as llama.cpp reads it: a ``gpt2`` (byte-level BPE) vocabulary and its special tokens."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges(merges)
    for role in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{role}_token_id")(token_id)
    bos = tokenizer.bos_token_id
    writer.add_add_bos_token(bos is not None and tokenizer("a")["input_ids"][:1] == [bos])
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)
