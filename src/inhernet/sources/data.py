"""A user's own data: an image folder or a CSV / TSV / JSONL text file, as a map-style data set.

Images (``ROOT/CLASS/xxx.png``) become ``(image, label)`` examples, text rows tokenised dicts (a causal
LM's without labels). Labels that are all non-negative integers are the class indices; otherwise the
sorted distinct names are. A class list given by the caller (recorded at compression, or the model's
own) overrides both.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, TextIO

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..config import is_int

__all__ = [
    "DEFAULT_MAX_LENGTH", "IMAGENET_MEAN", "IMAGENET_STD", "DataOptions", "ImageFiles", "TokenizedText",
    "UserData", "calibration_batches", "encode_labels", "image_folder", "make_loader", "read_table", "split",
    "tokenize_table",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")
DEFAULT_MAX_LENGTH = 128


@dataclass(frozen=True)
class DataOptions:
    """How examples are prepared; recorded at compression so that training and evaluation match
    (``max_length=None``: resolved by :func:`inhernet.sources.open_source`)."""

    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    max_length: int | None = None
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))
        if not is_int(self.image_size, 1):
            raise ValueError(f"image_size must be an int >= 1, got {self.image_size!r}")
        if self.max_length is not None and not is_int(self.max_length, 2):
            raise ValueError(f"max_length must be an int >= 2 (tokens), got {self.max_length!r}")
        numbers = all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.mean + self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or not numbers or not all(s > 0 for s in self.std):
            raise ValueError(f"mean and std need one value per RGB channel (std > 0), got {self.mean}, {self.std}")
        for name in ("text_column", "label_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty column name, got {getattr(self, name)!r}")
        try:
            codecs.lookup(self.encoding)
        except (LookupError, TypeError):
            raise ValueError(f"encoding {self.encoding!r} is not a known text encoding (e.g. utf-8, latin-1)") from None

    def updated(self, **changes: Any) -> DataOptions:
        """A copy with the given fields changed; ``None`` values keep the current ones."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataOptions:
        if not isinstance(d, dict):
            raise ValueError(f"data options must be a JSON object, got {d!r}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class UserData:
    """A data set with what evaluating on it needs: the class names (``None`` for an LM) and the metric."""

    dataset: Dataset
    classes: tuple[str, ...] | None
    metric: Literal["accuracy", "perplexity"]


def encode_labels(
    raw: Sequence[str], classes: Sequence[str] | None = None, *, source: str = "data"
) -> tuple[list[int], tuple[str, ...]]:
    """Class indices of ``raw`` labels and the class names they index (see the module docstring).

    Raises:
        ValueError: a label is neither one of ``classes`` nor an index into them (names up to five).
    """
    if classes is None:
        if raw and all(r.isdigit() for r in raw):
            ids = [int(r) for r in raw]
            return ids, tuple(str(i) for i in range(max(ids) + 1))
        classes = sorted(set(raw))
    classes = tuple(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = {r for r in raw if r not in index and not (r.isdigit() and int(r) < len(classes))}
    if unknown:
        shown = ", ".join(repr(u) for u in sorted(unknown)[:5])
        raise ValueError(
            f"{source}: labels {shown} are not among the model's {len(classes)} classes "
            f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})"
        )
    return [index[r] if r in index else int(r) for r in raw], classes


class ImageFiles(Dataset):
    """``(image tensor, label)`` examples of the image files listed in ``samples`` ``(path, label)``."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Any) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from None
        return self.transform(rgb), label


def image_folder(path: str | Path, options: DataOptions, classes: Sequence[str] | None = None) -> UserData:
    """The images under ``path/CLASS/`` (files with an image suffix, in sorted order), labelled by folder.

    Raises:
        ValueError: ``path`` is not a directory, has no class folders or no images in one of them.
    """
    from torchvision import transforms

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} not found (expected ROOT/CLASS/image.png)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no class folders; expected the layout {root}/CLASS/image.png")
    ids, names = encode_labels([f.name for f in folders], classes, source=str(root))
    samples: list[tuple[Path, int]] = []
    for folder, label in zip(folders, ids, strict=True):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        samples += [(f, label) for f in files]
    transform = transforms.Compose([
        transforms.Resize(options.image_size), transforms.CenterCrop(options.image_size),
        transforms.ToTensor(), transforms.Normalize(options.mean, options.std),
    ])
    return UserData(ImageFiles(samples, transform), names, "accuracy")


class TokenizedText(Dataset):
    """Dict examples sliced from tensors ``(N, max_length)`` of a tokenizer, plus optional ``labels``."""

    def __init__(self, encodings: dict[str, torch.Tensor], labels: torch.Tensor | None = None) -> None:
        self.encodings, self.labels = encodings, labels

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {k: v[index] for k, v in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def tokenize_table(
    table: dict[str, list[str]], tokenizer: Any, options: DataOptions, task: Literal["classify", "lm"],
    classes: Sequence[str] | None = None, *, source: str = "data",
) -> UserData:
    """Tokenise the text column to ``max_length`` tokens; labelled for ``classify``, unlabelled for ``lm``."""
    if options.max_length is None:
        raise ValueError("tokenize_table: options.max_length must be set (a number of tokens)")
    encoded = tokenizer(
        table[options.text_column], padding="max_length", truncation=True, max_length=options.max_length,
        return_tensors="pt",
    )
    encodings = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if task == "lm":
        return UserData(TokenizedText(encodings), None, "perplexity")
    ids, names = encode_labels(table[options.label_column], classes, source=source)
    return UserData(TokenizedText(encodings, torch.tensor(ids)), names, "accuracy")


def read_table(path: str | Path, columns: Sequence[str], encoding: str = "utf-8") -> dict[str, list[str]]:
    """The given columns of a ``.csv``, ``.tsv`` or ``.jsonl`` / ``.ndjson`` file, as strings.

    Raises:
        ValueError: the file is missing, unreadable, of another type, has no rows, or lacks a column.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} not found (expected an image folder or a CSV/TSV/JSONL file)")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise ValueError(f"{path}: text data must be a {', '.join(TEXT_SUFFIXES)} file (or give an image folder)")
    try:
        with open(path, newline="", encoding=encoding) as f:
            rows = _jsonl_rows(f, path) if suffix in (".jsonl", ".ndjson") else _csv_rows(f, suffix)
            out: dict[str, list[str]] = {c: [] for c in columns}
            for line, row in rows:
                for c in columns:
                    value = row.get(c)
                    if value is None or isinstance(value, (dict, list)):
                        have = ", ".join(map(repr, row)) or "none"
                        raise ValueError(
                            f"{path}, row {line}: no value in column {c!r} (columns: {have}); name the "
                            "columns with text_column / label_column (--text-column / --label-column)"
                        )
                    out[c].append(str(value))
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not {encoding} text ({err}); name its encoding with encoding= (--encoding), e.g. latin-1"
        ) from None
    except (OSError, csv.Error) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if not out[columns[0]]:
        raise ValueError(f"{path} has no data rows")
    return out


def _csv_rows(f: TextIO, suffix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
    for row in reader:
        yield reader.line_num, row


def _jsonl_rows(f: TextIO, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, text in enumerate(f, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {line}: not valid JSON: {err}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {line}: expected a JSON object per line, got {type(row).__name__}")
        yield line, row


def split(dataset: Dataset, val_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """A deterministic ``(train, validation)`` split: ``val_fraction`` of the examples (0: no validation),
    drawn with ``seed``."""
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n = len(dataset)  # type: ignore[arg-type]
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n - n_val < 1:
        raise ValueError(f"{n} examples leave none for training at val_fraction={val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    train = Subset(dataset, sorted(order[n_val:]))
    return train, (Subset(dataset, sorted(order[:n_val])) if n_val else None)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A ``DataLoader`` whose shuffled order is a function of ``seed`` alone."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def calibration_batches(dataset: Dataset, examples: int, batch_size: int) -> list[Any]:
    """The first ``examples`` examples of ``dataset`` (all if fewer), in batches: ``inherit(calib=...)``."""
    n = min(examples, len(dataset))  # type: ignore[arg-type]
    if n < 1:
        raise ValueError(f"calibration needs at least one example, got calib_size={examples}")
    return list(make_loader(Subset(dataset, range(n)), batch_size))
