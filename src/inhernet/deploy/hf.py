"""``export_hf``: a student of a Hugging Face model as a directory ``transformers`` loads (docs/formats/hf.md)."""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_dir
from ..layers import InherBlock
from ..stack import replace_module
from .compact import _dense_params, _params, densify
from .merge import merge_experts

__all__ = ["MODELING_NAME", "export_hf"]

#: the generated modeling file of a student with low-rank blocks
MODELING_NAME = "modeling_inhernet.py"
_BASE_LINE = "from transformers import PreTrainedModel as Base"


def export_hf(student: nn.Module, out: str | os.PathLike, tokenizer: Any = None, overwrite: bool = False) -> Path:
    """Write ``student`` (and ``tokenizer``'s files) to directory ``out``; returns it.

    Args:
        student: a ``transformers`` model or its student (blocks dropped, factorised, compacted); it is not
            modified.
        out: the directory to write, atomically (built beside it, then renamed into place).
        tokenizer: anything with ``save_pretrained`` (a ``transformers`` tokenizer or processor), or ``None``.
        overwrite: replace ``out`` when it exists and is not empty.

    Raises:
        ValueError: ``student`` is not a ``transformers`` model, a gate depends on its input, a pruned width
            the architecture's config cannot express, or ``out`` exists and is not empty without ``overwrite``.
        TypeError: ``tokenizer`` has no ``save_pretrained``.
    """
    if tokenizer is not None and not callable(getattr(tokenizer, "save_pretrained", None)):
        raise TypeError(
            f"tokenizer must have save_pretrained (a transformers tokenizer), got {type(tokenizer).__name__}"
        )
    target = Path(os.path.abspath(out))  # "." too has a name to rename
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{target} exists and is not empty: pass overwrite=True (--overwrite) to replace it")
    model = _exportable(student)
    ranks = {name: m.rank for name, m in model.named_modules() if isinstance(m, InherBlock)}
    _check_expressible(model, ranks)
    if ranks:
        model.config.inhernet_low_rank = ranks
        model.config.auto_map = dict.fromkeys(_auto_classes(model), f"{MODELING_NAME[:-3]}.Inher{type(model).__name__}")
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        if ranks:
            (tmp / MODELING_NAME).write_text(_modeling_source(type(model)), encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return target


def _modeling_source(base: type) -> str:
    """:mod:`inhernet.deploy.hf_modeling` with ``base`` as ``Base`` and its class named after ``base``."""
    from . import hf_modeling

    source = Path(hf_modeling.__file__).read_text(encoding="utf-8")
    source = source.replace(_BASE_LINE, f"from {base.__module__} import {base.__name__} as Base")
    return source.replace("class InherModel(", f"class Inher{base.__name__}(")


def _exportable(student: nn.Module) -> nn.Module:
    """A copy of ``student`` with its experts folded and its blocks at or above break-even dense."""
    hf = sys.modules.get("transformers.modeling_utils")  # imported wherever a transformers model exists
    if hf is None or not isinstance(student, hf.PreTrainedModel):
        raise ValueError(
            f"--format hf writes students of Hugging Face transformers models, got a {type(student).__name__}: "
            "write it with --format pt2 (torch.export) or --format onnx instead"
        )
    model = copy.deepcopy(student).eval()
    try:
        merge_experts(model)
    except ValueError as err:
        raise ValueError(f"{err}; or fold them with inhernet.compact(student, calib=...) and export that") from None
    for name, block in [(n, m) for n, m in model.named_modules() if isinstance(m, InherBlock)]:
        if _params(block) >= _dense_params(block):  # compact()'s break-even: dense is no larger
            model = replace_module(model, name, densify(block))
    return model


def _check_expressible(model: nn.Module, ranks: dict[str, int]) -> None:
    """Refuse a model whose tensors the architecture's config does not rebuild (a pruned width)."""
    from . import hf_modeling

    with torch.device("meta"):
        fresh = hf_modeling.use_low_rank(type(model)(copy.deepcopy(model.config)), ranks)
    want = {k: tuple(t.shape) for k, t in fresh.state_dict().items()}
    for key, tensor in model.state_dict().items():
        if want.get(key) != tuple(tensor.shape):
            raise ValueError(
                f"{key} has shape {tuple(tensor.shape)}, but {type(model.config).__name__} builds "
                f"{want.get(key, 'no such tensor')}: a pruned width this config cannot express; "
                "write the student with --format pt2 or --format onnx instead"
            )


def _auto_classes(model: nn.Module) -> list[str]:
    """The ``transformers`` Auto classes that build ``model``'s class from its config (``auto_map``'s keys)."""
    import transformers

    found = []
    for name in (n for n in dir(transformers) if n.startswith("AutoModel")):
        mapping = getattr(getattr(transformers, name), "_model_mapping", None)
        with contextlib.suppress(KeyError):  # a config this Auto class does not map
            if mapping is not None and mapping[type(model.config)] is type(model):
                found.append(name)
    if not found:
        raise ValueError(
            f"no transformers AutoModel class builds {type(model).__name__}, so --format hf cannot name it in "
            "config.json's auto_map; write the student with --format pt2 or --format onnx instead"
        )
    return found
