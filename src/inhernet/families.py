"""Model families and the recipe our benchmarks found best for each: what ``InherConfig``'s ``None``
("auto") fields resolve to.

``InherConfig(budget=...)`` leaves ``experts``, ``min_rank_ratio`` and ``calibration`` at ``None``; at
plan time (:func:`inhernet.plan`, :func:`inhernet.inherit`) they are filled from the teacher's family,
and the resolved config (family included) is what the plan holds and :func:`inhernet.save` records,
so a saved model loads exactly. ``InherConfig.paper(...)`` is the method as published (h = 3, one-pass
whitening, no rank floor). The evidence is in README.md ("Defaults by model family") and BENCHMARKS.md.
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
    #: ``InherConfig.drop_blocks`` under a plain parameter budget (``budget=``, no ``budgets=`` or ``prune=``) with
    #: ``init="whiten"``, on a model with a stack of blocks; ``None``: no block dropped
    drop_blocks: float | None = None


FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "conv": FamilyDefaults(
        1, 0.0, "one-pass",
        "h = 1 >= h = 3 at equal parameters: mnist-cnn 0.1 99.06-99.12% vs 98.98%; EfficientNet-Lite0 0.25 "
        "86% vs 81% after 30 KD steps (every expert costs rank at a fixed budget)",
    ),
    "encoder": FamilyDefaults(
        1, 0.0, "one-pass",
        "no measurement shows h > 1 paying at equal parameters; the conv and causal-LM evidence says each "
        "expert costs rank, so h = 1 until an encoder benchmark says otherwise",
    ),
    "causal-lm": FamilyDefaults(
        1, 0.25, "sequential",
        "SmolLM2-135M at 0.8: zero-shot perplexity 3.08x the teacher with sequential whitening, a 25% rank "
        "floor and h = 1, against 43x for one-pass h = 3 (which cannot even keep the floor); after 200 KD steps "
        "the more of the cut whole blocks pay the better: 35.9 with 7 of 30 blocks, 40.2 with 4, 42.9 with 2, "
        "44.3 with none (prune-kd 36.8); at 0.789, 7 blocks and 2.7% in rank cuts end at 38.3 against 36.9 for 8 "
        "blocks alone, so the cut goes to as many blocks as fit (drop_blocks=1); zero-shot the order differs "
        "(120.7 / 121.7 / 119.8 / 147.2 with 4k calibration tokens), what users get after KD decides",
        drop_blocks=1.0,
    ),
    "other": FamilyDefaults(1, 0.0, "one-pass", "as conv nets and encoders: h = 1, one-pass whitening"),
}
FAMILIES = tuple(FAMILY_DEFAULTS)

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def model_family(model: nn.Module) -> str:
    """``"causal-lm"``, ``"encoder"``, ``"conv"`` or ``"other"``.

    Causal LM: a ``*ForCausalLM`` / ``*LMHeadModel`` class (but not a masked LM), a Hugging Face config
    with ``is_decoder`` or such an architecture, or a stack of ``*DecoderLayer`` blocks without encoder layers. Encoder: any
    other model holding a Hugging Face config or attention (``nn.MultiheadAttention``, a
    ``*SelfAttention`` / ``*Attention`` module). Conv: most weights in ``nn.Conv1d`` / ``nn.Conv2d``.
    """
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
    attention = any(isinstance(m, nn.MultiheadAttention) for m in model.modules()) or any(
        n.endswith("Attention") for n in names
    )
    if attention or any(hasattr(m, "config") and hasattr(m.config, "model_type") for m in model.modules()):
        return "encoder"
    conv = sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d)) for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    return "conv" if total and conv / total > 0.5 else "other"
