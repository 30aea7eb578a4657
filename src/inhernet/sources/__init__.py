"""A user's own teacher and data, for ``inhernet compress`` / ``train`` / ``eval``.

from inhernet.sources import DataOptions, Source, open_source, parse_model_spec, split

spec = parse_model_spec("torchvision:resnet18", weights="resnet18-cats.safetensors")
opened = open_source(Source(spec, DataOptions(image_size=160)), "photos/")   # teacher + data
train, val = split(opened.data.dataset, val_fraction=0.1, seed=0)

Models (:mod:`.models`), data (:mod:`.data`) and ``source.json``, which records both (:mod:`.record`).
"""

from .data import (
    DataOptions,
    UserData,
    calibration_batches,
    encode_labels,
    image_folder,
    make_loader,
    read_table,
    split,
)
from .models import (
    ModelSpec,
    build_model,
    has_trained_head,
    load_state_dict,
    load_tokenizer,
    parse_model_spec,
)
from .record import SOURCE_NAME, Opened, Source, open_source, read_source, write_source

__all__ = [
    "SOURCE_NAME", "DataOptions", "ModelSpec", "Opened", "Source", "UserData", "build_model",
    "calibration_batches", "encode_labels", "has_trained_head", "image_folder", "load_state_dict",
    "load_tokenizer", "make_loader", "open_source", "parse_model_spec", "read_source", "read_table", "split",
    "write_source",
]
