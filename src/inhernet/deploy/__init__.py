"""Deployment: compute cost (MACs), merging the gated experts, ONNX export.

from inhernet.deploy import count_macs, merge_experts, export_onnx, verify_onnx

macs = count_macs(student, example_batch)        # multiply-accumulates of one forward pass
merge_experts(student, calib=batches)            # h experts -> 1 up-projection, in place
export_onnx(student, example_batch, "student.onnx")
verify_onnx("student.onnx", student, example_batch)   # max relative error vs PyTorch
deployable = compact(student, calib=batches)     # experts folded, dense where faster, same outputs
"""

from .compact import compact, deployed
from .costs import CostTable, LayerShape
from .export import export_onnx, onnx_inputs, verify_onnx
from .flops import count_macs, macs_by_module
from .merge import gate_means, merge_experts

__all__ = [
    "CostTable",
    "LayerShape",
    "compact",
    "count_macs",
    "deployed",
    "export_onnx",
    "gate_means",
    "macs_by_module",
    "merge_experts",
    "onnx_inputs",
    "verify_onnx",
]
