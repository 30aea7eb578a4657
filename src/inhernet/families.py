"""Model families and the recipe our benchmarks found best for each: what ``InherConfig``'s ``None``
("auto") fields resolve to at plan time (the resolved config is what the plan holds and
:func:`inhernet.save` records). Evidence: README.md ("Defaults by model family") and BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["FAMILIES", "FAMILY_DEFAULTS", "FamilyDefaults", "model_family"]


@dataclass(frozen=True)
class FamilyDefaults:
    """The auto fields of :class:`~inhernet.config.InherConfig` for one family, and why."""

    experts: int
    min_rank_ratio: float
    calibration: str
    evidence: str
    #: ``InherConfig.drop_blocks`` under a plain whitened ``budget=`` on a model with a stack of blocks
    drop_blocks: float | None = None


FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "conv": FamilyDefaults(
        1, 0.0, "one-pass",
        "h = 1 >= h = 3 at equal parameters (BENCHMARKS.md, 'Experts: h = 1..4 at equal parameters')",
    ),
    "encoder": FamilyDefaults(
        1, 0.0, "one-pass",
        "no measurement shows h > 1 paying at equal parameters; the conv and causal-LM evidence says each "
        "expert costs rank, so h = 1 until an encoder benchmark says otherwise",
    ),
    "causal-lm": FamilyDefaults(
        1, 0.25, "sequential",
        "SmolLM2-135M (BENCHMARKS.md, 'Rank floor, sequential calibration, calibration size' and "
        "'drop_blocks: the share of the cut paid by whole blocks')",
        drop_blocks=1.0,
    ),
    "other": FamilyDefaults(1, 0.0, "one-pass", "as conv nets and encoders: h = 1, one-pass whitening"),
}
FAMILIES = tuple(FAMILY_DEFAULTS)

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def model_family(model: nn.Module) -> str:
    """``"causal-lm"`` (a ``*ForCausalLM`` / ``*LMHeadModel``, ``is_decoder``, or ``*DecoderLayer`` blocks
    without encoder layers), ``"encoder"`` (other models with a Hugging Face config or attention),
    ``"conv"`` (most weights in convolutions) or ``"other"``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    name = type(model).__name__
    config = getattr(model, "config", None)
    names = {type(m).__name__ for m in model.modules()}
    decoder_layers = any(n.endswith("DecoderLayer") for n in names)
    encoder_layers = any(n.endswith(("EncoderLayer", "Encoder")) for n in names)
    if (
        (name.endswith(_CAUSAL_SUFFIXES) and "Masked" not in name)
        or bool(getattr(config, "is_decoder", False))
        or any(str(a).endswith(_CAUSAL_SUFFIXES) for a in getattr(config, "architectures", None) or ())
        or (decoder_layers and not encoder_layers)
    ):
        return "causal-lm"
    if any(n.endswith("Attention") for n in names) or any(
        isinstance(m, nn.MultiheadAttention) or hasattr(getattr(m, "config", None), "model_type")
        for m in model.modules()
    ):
        return "encoder"
    conv = sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d)) for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    return "conv" if total and conv / total > 0.5 else "other"
