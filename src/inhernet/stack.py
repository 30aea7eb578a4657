"""Where things sit in a model: its stack of repeated blocks, and putting a module at a dotted name."""

from __future__ import annotations

from torch import nn

__all__ = ["layer_stack", "replace_module"]


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of repeated blocks: ``(name, ModuleList)``.

    The largest (by parameters) ``nn.ModuleList`` of at least two children of one class, e.g.
    ``encoder.layer`` of a BERT or ``model.layers`` of a Llama.

    Raises:
        ValueError: if the model has no such list (it is not a stack of repeated layers).
    """
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2 and len({type(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, module)
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no stack of repeated layers (an nn.ModuleList of >= 2 blocks of one "
            "class); layer dropping applies to transformers"
        )
    return best[1], best[2]


def replace_module(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at dotted ``name`` inside ``root``; returns the (possibly new) root."""
    if not name:
        return module
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
    return root
