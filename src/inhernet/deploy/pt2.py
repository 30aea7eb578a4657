"""``torch.export`` programs: a ``.pt2`` file that ``torch.export.load`` runs with torch alone."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_path
from ..batches import evaluating
from .export import _LogitsOf, onnx_inputs, relative_error

__all__ = ["export_pt2", "verify_pt2"]


def export_pt2(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str]) -> Path:
    """Trace ``model`` with ``torch.export`` (dynamic batch) and save the program to ``path`` atomically.

    Args:
        model: the model to export, traced in eval mode (its flags are restored after).
        example_inputs: one batch (tensor, ``(inputs, labels)`` or dict of tensors); shapes but the batch's
            are fixed in the program.
        path: the ``.pt2`` file to write.

    Raises:
        ValueError: ``torch.export`` cannot trace the model; the message names the layer and the op.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = onnx_inputs(example_inputs)
    # two rows: a size-1 axis would be specialised to 1, and the program keeps its example inputs
    args = tuple(t[:2].clone() if len(t) > 1 else torch.cat([t, t]) for t in inputs.values())
    shapes = (tuple({0: torch.export.Dim.DYNAMIC} for _ in args),)
    wrapper = _LogitsOf(model, list(inputs) if isinstance(example_inputs, Mapping) else None)
    # on failure torch prints the partial graph to stderr: the error below says what failed where, in one line
    with evaluating(model), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        try:
            program = torch.export.export(wrapper, args, dynamic_shapes=shapes, strict=False)
        except Exception as err:  # torch raises many types here; each means "cannot trace"
            raise ValueError(f"torch.export cannot trace {type(model).__name__}: {_where(err, model)}") from err
    with atomic_path(path) as tmp, open(tmp, "wb") as file:  # a file object: torch names by a path's suffix
        torch.export.save(program, file)
    return Path(path)


def _where(err: Exception, model: nn.Module) -> str:
    """The failing op (the error's first line) and the innermost layer of ``model`` running when it failed."""
    names = {id(m): name or "(root)" for name, m in model.named_modules()}
    where, tb = "", err.__traceback__
    while tb is not None:  # non-strict tracing runs the model's own code: the deepest frame of one of its modules
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            code = tb.tb_frame.f_code
            where = f" in layer {names[id(owner)]} ({type(owner).__name__}, {code.co_filename}:{tb.tb_lineno})"
        tb = tb.tb_next
    op = next((s.strip() for s in str(err).splitlines() if s.strip()), type(err).__name__)
    return f"{op}{where}; the ONNX exporter (--format onnx) traces by running the model and may still work"


def verify_pt2(path: str | os.PathLike[str], model: nn.Module, example_inputs: Any) -> float:
    """Run the ``.pt2`` file and return ``max|program - model| / max|model|`` over the logits."""
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        return relative_error(program(*onnx_inputs(example_inputs).values()), model, example_inputs)

