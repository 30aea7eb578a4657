"""Deployment: merging the gated experts (:func:`merge_experts`), the compact form (:func:`compact`),
ONNX export (:func:`export_onnx`, checked by :func:`verify_onnx`). What a model costs lives in
:mod:`inhernet.costs`.
"""

from .compact import compact, deployed
from .export import export_onnx, onnx_inputs, verify_onnx
from .gguf import export_gguf
from .merge import gate_means, merge_experts

__all__ = ["compact", "deployed", "export_onnx", "gate_means", "merge_experts", "onnx_inputs", "verify_onnx"]
