"""GGUF files (llama.cpp) of llama-family causal-LM students, via the ``gguf`` package (docs/formats/gguf.md)."""

from __future__ import annotations

import copy
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

__all__ = ["export_gguf"]

_OTHER_FORMATS = "pt2, onnx or hf (inhernet export --format ...)"


def export_gguf(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the llama-family causal LM ``model`` (a student or any ``LlamaForCausalLM``) as a GGUF file.

    Raises:
        ValueError: ``model`` is not a llama causal LM GGUF can express (the message says why and which
            formats work), or its gates depend on their input (fold them with ``merge_experts(model, calib)``).
    """
    config = _llama_config(model)
    dense = _standard(model)
    tensors = _tensors(dense, config)
    import gguf

    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        _metadata(writer, config, tensors, len(dense.model.layers))
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
