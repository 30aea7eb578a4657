"""Where things sit in a model: its stack of repeated blocks, and putting a module at a dotted name."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["KEPT_LAYERS", "keep_layers_", "layer_stack", "origin_name", "replace_module"]

#: what :func:`keep_layers_` leaves on a model: ``(stack name, the original index of every block kept)``
KEPT_LAYERS = "inhernet_kept_layers"


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of repeated blocks: the largest ``(name, ModuleList)`` of >= 2 children of one class.

    Raises:
        ValueError: if the model has no such list (it is not a stack of repeated layers).
    """
    stacks = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(c) for c in m}) == 1]
    if not stacks:
        raise ValueError(
            f"{type(model).__name__} has no stack of repeated layers (an nn.ModuleList of >= 2 blocks of one "
            "class); layer dropping applies to transformers"
        )
    return max(stacks, key=lambda s: sum(p.numel() for p in s[1].parameters()))  # the first of the largest


def replace_module(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at dotted ``name`` inside ``root``; returns the (possibly new) root. A block (a module
    with ``inhernet_name``: inherit, load and compact place them all here) records ``name``."""
    if hasattr(module, "inhernet_name"):
        module.inhernet_name = name
    if not name:
        return module
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)
    return root


def keep_layers_(model: nn.Module, indices: Sequence[int]) -> Callable[[], None]:
    """Keep only the layers ``indices`` (sorted, distinct) of ``model``'s stack, in place, with the Hugging
    Face bookkeeping (``config.num_hidden_layers``, ``layer_types``, each block's ``layer_idx``); returns
    the undo. The model records the original blocks it kept (:data:`KEPT_LAYERS`, see :func:`origin_name`)."""
    name, stack = layer_stack(model)
    recorded = getattr(model, KEPT_LAYERS, None)
    origin = recorded[1] if recorded is not None and recorded[0] == name else range(len(stack))
    parent = model.get_submodule(name.rpartition(".")[0])
    attr = name.rpartition(".")[2]
    kept = nn.ModuleList(stack[i] for i in indices)
    numbered = [(m, m.layer_idx) for m in stack.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    config = getattr(model, "config", None)
    before = {k: getattr(config, k) for k in ("num_hidden_layers", "layer_types") if hasattr(config, k)}
    setattr(parent, attr, kept)
    setattr(model, KEPT_LAYERS, (name, tuple(origin[i] for i in indices)))
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    if "num_hidden_layers" in before:
        config.num_hidden_layers = len(kept)
        layer_types = before.get("layer_types")
        if isinstance(layer_types, list) and len(layer_types) == len(stack):
            config.layer_types = [layer_types[i] for i in indices]

    def undo() -> None:
        setattr(parent, attr, stack)
        if recorded is None:
            delattr(model, KEPT_LAYERS)
        else:
            setattr(model, KEPT_LAYERS, recorded)
        for module, index in numbered:
            module.layer_idx = index
        for key, value in before.items():
            setattr(config, key, value)

    return undo


def origin_name(model: nn.Module, name: str) -> str:
    """The name that the module now at ``name`` had before :func:`keep_layers_` renumbered ``model``'s stack
    (``"model.layers.3.mlp"`` was ``"model.layers.5.mlp"`` when block 3 is the original block 5)."""
    recorded = getattr(model, KEPT_LAYERS, None)
    if recorded is None or not name.startswith(recorded[0] + "."):
        return name
    stack, kept = recorded
    index, dot, rest = name.removeprefix(stack + ".").partition(".")
    return f"{stack}.{kept[int(index)]}{dot}{rest}" if index.isdigit() else name
