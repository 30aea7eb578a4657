"""Deployment: merging the gated experts, the compact form, and export (ONNX, ``torch.export``, GGUF, Hugging
Face). What a model costs lives in :mod:`inhernet.costs`."""

from .compact import compact, deployed
from .export import export_onnx, onnx_inputs, verify_onnx
from .gguf import export_gguf
from .hf import export_hf
from .merge import gate_means, merge_experts
from .pt2 import export_pt2, verify_pt2

__all__ = [
    "compact", "deployed", "export_gguf", "export_hf", "export_onnx", "export_pt2", "gate_means", "merge_experts",
    "onnx_inputs", "verify_onnx", "verify_pt2",
]
