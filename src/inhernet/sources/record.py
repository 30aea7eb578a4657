"""``source.json``, what a compressed model was made from (the teacher's spec, the data options and
the class names), and opening a teacher together with data for it."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from .._atomic import atomic_write
from .._files import CONFIG_NAME, SOURCE_NAME
from .data import (
    DEFAULT_MAX_LENGTH,
    DataOptions,
    UserData,
    encode_labels,
    image_folder,
    read_table,
    tokenize_table,
)
from .models import ModelSpec, build_model, has_trained_head, load_tokenizer

__all__ = ["SOURCE_FORMAT", "SOURCE_NAME", "Opened", "Source", "open_source", "read_source", "write_source"]

SOURCE_FORMAT = 1
_GENERIC_LABEL = re.compile(r"LABEL_\d+")


@dataclass(frozen=True)
class Source:
    """A teacher and how its data is prepared: the content of ``source.json``; ``classes`` in the order
    of the model's outputs (``None`` for an LM, or before data has been seen)."""

    model: ModelSpec
    data: DataOptions = field(default_factory=DataOptions)
    classes: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": SOURCE_FORMAT, "model": self.model.to_dict(), "data": self.data.to_dict(),
            "classes": list(self.classes) if self.classes is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Source:
        classes = d.get("classes")
        if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise ValueError(f"'classes' must be a list of names, got {classes!r}")
        return cls(ModelSpec.from_dict(d.get("model")), DataOptions.from_dict(d.get("data", {})),
                   tuple(classes) if classes is not None else None)


@dataclass
class Opened:
    """A built teacher and the data prepared for it; ``source`` has every default resolved."""

    source: Source
    teacher: nn.Module
    data: UserData


def write_source(directory: str | os.PathLike[str], source: Source) -> Path:
    """Write ``directory/source.json`` atomically; returns its path."""
    return atomic_write(Path(directory) / SOURCE_NAME, json.dumps(source.to_dict(), indent=2) + "\n")


def read_source(directory: str | os.PathLike[str]) -> Source:
    """The :class:`Source` recorded in ``directory`` by ``inhernet compress``.

    Raises:
        ValueError: ``directory`` is not a compressed model, or its ``source.json`` is missing or malformed.
    """
    directory = Path(directory)
    path = directory / SOURCE_NAME
    if not (directory / CONFIG_NAME).is_file():
        raise ValueError(f"{directory} is not a compressed model directory (no {CONFIG_NAME}); run inhernet compress")
    if not path.is_file():
        raise ValueError(
            f"{path} not found: {directory} was not written by inhernet compress, so its teacher is unknown"
        )
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(d, dict) or d.get("format_version") != SOURCE_FORMAT:
        raise ValueError(f"{path}: expected a JSON object with format_version {SOURCE_FORMAT}")
    try:
        return Source.from_dict(d)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} is malformed: {err}") from None


def open_source(source: Source, data_path: str | os.PathLike[str]) -> Opened:
    """Build the teacher of ``source`` and prepare the data at ``data_path`` for it.

    Image models read an image folder, Hugging Face models a text file (class names from ``id2label``
    when it names them, a new head sized to the data when the checkpoint has none, ``max_length`` capped
    at the model's positions).

    Raises:
        ValueError: data of the wrong kind for the model, more classes than the model's head has,
            ``max_length`` beyond the model's positions, or any error of the loaders.
    """
    spec, options, path = source.model, source.data, Path(data_path)
    if spec.library == "hf":
        if path.is_dir():
            raise ValueError(f"{spec.name} is a text model: give a CSV/TSV/JSONL file, not the folder {path}")
        # The file is read first, so that a bad one fails before a model loads.
        columns = [options.text_column] + ([options.label_column] if spec.task == "classify" else [])
        table = read_table(path, columns, encoding=options.encoding)
        if spec.task == "classify" and spec.num_classes is None and not has_trained_head(spec):
            _, names = encode_labels(table[options.label_column], source.classes, source=str(path))
            spec = replace(spec, num_classes=len(names))  # a new head: as many outputs as classes
        teacher = build_model(spec)
        options = options.updated(max_length=_max_length(teacher, options.max_length))
        classes = source.classes
        if spec.task == "classify" and classes is None:
            classes = _label_names(teacher)
        data = tokenize_table(table, load_tokenizer(spec), options, spec.task, classes, source=str(path))
        head = getattr(teacher.config, "num_labels", None) if spec.task == "classify" else None
        if head is not None and data.classes is not None and len(data.classes) > head:
            raise ValueError(
                f"{path} has {len(data.classes)} classes but {spec.name} classifies into {head} (num_labels); "
                "check the label column, or give --num-classes to train a new head"
            )
    else:
        if path.is_file():
            raise ValueError(f"{spec} is an image model: give an image folder (ROOT/CLASS/image.png), not {path}")
        data = image_folder(path, options, source.classes)
        assert data.classes is not None
        num_classes = spec.num_classes or len(data.classes)
        if num_classes < len(data.classes):
            raise ValueError(f"{path} has {len(data.classes)} classes but the model is set to {num_classes} (--num-classes)")
        spec = replace(spec, num_classes=num_classes)
        teacher = build_model(spec)
    return Opened(Source(spec, options, data.classes), teacher, data)


def _max_length(model: nn.Module, requested: int | None) -> int:
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if requested is None:
        return min(DEFAULT_MAX_LENGTH, limit) if limit else DEFAULT_MAX_LENGTH
    if limit and requested > limit:
        raise ValueError(f"max_length={requested} exceeds the model's {limit} positions; give at most {limit}")
    return requested


def _label_names(model: nn.Module) -> tuple[str, ...] | None:
    """The config's class names, unless they are the generic ``LABEL_i`` placeholders."""
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)]
    if not names or all(_GENERIC_LABEL.fullmatch(n) for n in names):
        return None
    return tuple(names)
