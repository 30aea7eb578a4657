"""inhernet: model compression by network inheritance.

Each weight layer of a pretrained teacher becomes an SVD-initialised asymmetric low-rank block with
gated experts (InherNet, Zhou et al., ICLR 2026), at an exact parameter budget; the result is
fine-tuned by distillation and compared with a conventionally distilled student of the same size.
"""

__version__ = "0.1.0"

from .config import InherConfig  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .layers import InherBlock, InherConv, InherEmbedding, InherLinear, expert_spread  # noqa: E402
from .plan import LayerPlan, Plan, plan  # noqa: E402
from .serialization import load, save  # noqa: E402
from .surgery import inherit  # noqa: E402

__all__ = [
    "InherBlock",
    "InherConfig",
    "InherConv",
    "InherEmbedding",
    "InherLinear",
    "LayerPlan",
    "Plan",
    "__version__",
    "evaluate",
    "expert_spread",
    "inherit",
    "load",
    "plan",
    "save",
]
