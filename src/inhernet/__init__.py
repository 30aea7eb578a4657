"""inhernet: model compression by network inheritance.

Each weight layer of a pretrained teacher becomes an SVD-initialised asymmetric low-rank block with
gated experts (InherNet, Zhou et al., ICLR 2026), at an exact parameter budget; the result is
fine-tuned by distillation and compared with a conventionally distilled student of the same size.
"""

from ._version import __version__
from .config import InherConfig
from .costs import CostTable, count_macs
from .deploy import compact, export_gguf, export_hf, export_onnx, export_pt2, merge_experts
from .distillation import DistillConfig, distill
from .evaluate import evaluate
from .layers import InherBlock, InherConv, InherEmbedding, InherLinear, expert_spread
from .pipeline import inherit, plan
from .plan import LayerPlan, Plan
from .serialization import load, save
from .surgery import build

__all__ = [
    "CostTable", "DistillConfig", "InherBlock", "InherConfig", "InherConv", "InherEmbedding", "InherLinear",
    "LayerPlan", "Plan", "__version__", "build", "compact", "count_macs", "distill", "evaluate",
    "expert_spread", "export_gguf", "export_hf", "export_onnx", "export_pt2", "inherit", "load",
    "merge_experts", "plan", "save",
]
