"""ONNX export of an inherited (or any) model, written atomically, plus an onnxruntime check.

Silenced: the tracer's DeprecationWarning, and Hugging Face's ``UserWarning`` that ``aten::index`` "with
negative indices" is wrong: their only one, the padding-mask lookup of ``transformers.masking_utils``,
indexes by ``arange``s (``tests/unit/test_deploy_export.py`` checks padded rows against PyTorch).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_path
from ..batches import evaluating, forward_batch, logits_of
from ..dual import dual_output, is_dual_output
from .compact import _logits, _relative_change

__all__ = ["export_onnx", "onnx_inputs", "relative_error", "verify_onnx"]

OUTPUT_NAME = "logits"
#: a dual encoder's graph outputs, in the order :func:`relative_error` joins them
DUAL_OUTPUT_NAMES = ["image_embeds", "text_embeds"]


class _LogitsOf(nn.Module):
    """Positional tensors in, logits (a dual encoder: its two embeddings) out: the calling convention an ONNX
    graph or a ``torch.export`` program needs."""

    def __init__(self, model: nn.Module, keys: list[str] | None) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch: Any = tensors[0] if self.keys is None else dict(zip(self.keys, tensors, strict=True))
        out = forward_batch(self.model, batch)
        if is_dual_output(out):
            pair = dual_output(out)
            return pair.image_embeds, pair.text_embeds
        return logits_of(out)


def onnx_inputs(example_inputs: Any) -> dict[str, torch.Tensor]:
    """The named input tensors of the exported graph for a batch (tensor, ``(inputs, labels)`` or dict)."""
    first = example_inputs[0] if isinstance(example_inputs, (tuple, list)) and example_inputs else example_inputs
    if isinstance(first, torch.Tensor):
        return {"input": first}
    if isinstance(example_inputs, Mapping):
        named = {str(k): v for k, v in example_inputs.items() if k != "labels"}
        bad = [k for k, v in named.items() if not isinstance(v, torch.Tensor)]
        if bad or not named:
            raise TypeError(
                f"example_inputs dict must hold tensors (got non-tensor entries {bad}); pass e.g. "
                "{'input_ids': ..., 'attention_mask': ...}"
            )
        return named
    raise TypeError(
        f"example_inputs must be a tensor, an (inputs, labels) tuple with a tensor first, or a dict of "
        f"tensors, got {type(example_inputs).__name__}"
    )


def export_onnx(
    model: nn.Module, example_inputs: Any, path: str | os.PathLike[str], opset: int = 17,
    dynamic_batch: bool = True, *, dynamic_sequence: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None, dynamo: bool = False,
) -> Path:
    """Export ``model`` to the ONNX file ``path`` (written to a temporary file, then renamed).

    Args:
        model: the model to export; it is traced in eval mode (its flags are restored after).
        example_inputs: one batch (tensor, ``(inputs, labels)`` tuple or Hugging Face style dict) to
            trace; its non-dynamic shapes are fixed in the graph.
        path: the ``.onnx`` file to write (its directory is created), replaced only once the export succeeded.
        opset: ONNX opset version.
        dynamic_batch: make axis 0 of every input and of ``logits`` symbolic (``batch``).
        dynamic_sequence: make axis 1 of every token input (an integer tensor of rank 2) symbolic
            (``sequence``), and of ``logits`` too when it has the example's sequence length.
        dynamic_axes: extra symbolic axes per input/output name, e.g. ``{"input_ids": {1: "tokens"}}``;
            merged over (and renaming) the batch and sequence axes.
        dynamo: use the ``torch.export``-based exporter (needs ``onnxscript``; opset >= 18).

    Returns:
        The path written (check it with :func:`verify_onnx`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = onnx_inputs(example_inputs)
    names = list(inputs)
    target = Path(path)
    with evaluating(model), atomic_path(target) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # never negative in the models exported here: see the module documentation
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        wrapper = _LogitsOf(model, names if isinstance(example_inputs, Mapping) else None).eval()
        outputs = wrapper(*inputs.values())  # run once: which outputs, and do they follow the sequence?
        out_names = DUAL_OUTPUT_NAMES if isinstance(outputs, tuple) else [OUTPUT_NAME]
        axes = _symbolic_axes(inputs, outputs, out_names, dynamic_batch, dynamic_sequence, dynamic_axes)
        options = _exporter_options(names, axes, dynamo)
        try:
            torch.onnx.export(
                wrapper, tuple(inputs.values()), str(tmp), input_names=names, output_names=out_names,
                opset_version=opset, **options,
            )
        except RuntimeError as err:
            if "factorised layer's dense weight" not in str(err):
                raise
            raise ValueError(  # model code reads a factorised layer's .weight, which the tracer cannot follow
                f"the ONNX tracer cannot follow model code that reads a factorised layer's weight ({err}); "
                "export with export_pt2 (--format pt2), or keep that layer dense: InherConfig(exclude=[...])"
            ) from err
    return target


def _symbolic_axes(
    inputs: dict[str, torch.Tensor], outputs: Any, out_names: list[str], dynamic_batch: bool,
    dynamic_sequence: bool, dynamic_axes: Mapping[str, Mapping[int, str]] | None,
) -> dict[str, dict[int, str]]:
    """The symbolic axes per graph input/output name: the batch and sequence axes as ``export_onnx``
    documents them, merged with ``dynamic_axes``."""
    graph = [*inputs, *out_names]
    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in graph} if dynamic_batch else {}
    tokens = {n: t for n, t in inputs.items() if t.dim() == 2 and not (t.is_floating_point() or t.is_complex())}
    for name in tokens if dynamic_sequence else ():
        axes.setdefault(name, {})[1] = "sequence"
    logits = outputs[0] if isinstance(outputs, tuple) else outputs
    lengths = {t.shape[1] for t in tokens.values()} if dynamic_sequence else set()
    if out_names == [OUTPUT_NAME] and logits.dim() >= 3 and logits.shape[1] in lengths:
        axes.setdefault(OUTPUT_NAME, {})[1] = "sequence"  # a language model's logits follow its tokens
    for name, more in (dynamic_axes or {}).items():
        if name not in graph:
            raise ValueError(f"dynamic_axes names {name!r}, but the graph's inputs/outputs are {graph}")
        axes.setdefault(name, {}).update({int(k): str(v) for k, v in more.items()})
    return axes


def _exporter_options(names: list[str], axes: dict[str, dict[int, str]], dynamo: bool) -> dict[str, Any]:
    """The ``torch.onnx.export`` options of the chosen exporter (checked to be installed first)."""
    if not dynamo:
        return {"dynamo": False, "dynamic_axes": axes or None, "do_constant_folding": True}
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImportError(
            "export_onnx(dynamo=True) needs the onnxscript package (pip install onnxscript); "
            "the default dynamo=False exporter does not"
        ) from None
    return {"dynamo": True, "external_data": False, "dynamic_shapes": _dynamic_shapes(names, axes)}


def _dynamic_shapes(names: list[str], axes: dict[str, dict[int, str]]) -> tuple[Any, ...] | None:
    """``dynamic_axes`` as ``torch.export`` dynamic shapes of the wrapper's ``*tensors`` (one shared
    ``Dim`` per axis name, so e.g. every input's batch axis is the same symbol)."""
    if not any(axes.get(n) for n in names):
        return None
    dims = {label: torch.export.Dim(label) for n in names for label in axes.get(n, {}).values()}
    return (tuple({i: dims[label] for i, label in axes.get(n, {}).items()} or None for n in names),)


def verify_onnx(path: str | os.PathLike[str], model: nn.Module, example_inputs: Any) -> float:
    """Run the ONNX file in onnxruntime (CPU) and return ``max|ort - torch| / max|torch|`` over the
    logits against ``model`` (~1e-6 is float32 rounding). Needs the ``onnxruntime`` package."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("verify_onnx needs onnxruntime (pip install onnxruntime)") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: t.detach().cpu().numpy() for name, t in onnx_inputs(example_inputs).items()}
    return relative_error([torch.from_numpy(a) for a in session.run(None, feed)], model, example_inputs)


def relative_error(got: torch.Tensor | Sequence[torch.Tensor], model: nn.Module, example_inputs: Any) -> float:
    """``max|got - model| / max|model|`` over the logits of ``model`` on ``example_inputs`` (a dual encoder's
    two embeddings, given in :data:`DUAL_OUTPUT_NAMES` order, joined side by side as ``compact`` reads them)."""
    got = torch.cat(list(got), -1) if isinstance(got, Sequence) else got
    want = _logits(model, example_inputs).cpu()
    if got.shape != want.shape:
        raise ValueError(f"the exported model returned logits of shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
    return _relative_change(got.detach().cpu(), want)
