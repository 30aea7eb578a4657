"""Deployment: merging the gated experts, the compact form, ONNX export.

from inhernet.deploy import compact, merge_experts, export_onnx, verify_onnx

merge_experts(student, calib=batches)            # h experts -> 1 up-projection, in place
export_onnx(student, example_batch, "student.onnx")
verify_onnx("student.onnx", student, example_batch)   # max relative error vs PyTorch
deployable = compact(student, calib=batches)     # experts folded, dense where faster, same outputs

What a model costs (MACs, measured layer times) lives beneath the core, in :mod:`inhernet.costs`
(``inhernet.count_macs``, ``inhernet.CostTable``).
"""

from .compact import compact, deployed
from .export import export_onnx, onnx_inputs, verify_onnx
from .merge import gate_means, merge_experts

__all__ = ["compact", "deployed", "export_onnx", "gate_means", "merge_experts", "onnx_inputs", "verify_onnx"]
