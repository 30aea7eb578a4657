"""The file names a model directory's two writers (:mod:`inhernet.serialization`, :mod:`inhernet.sources`)
share, and the checksum that guards its files: here, so that sources never imports serialization."""

from __future__ import annotations

import hashlib
import os

__all__ = ["CONFIG_NAME", "SOURCE_NAME", "sha256_file"]

CONFIG_NAME = "inhernet.json"  # by inhernet.save, beside the weights
SOURCE_NAME = "source.json"

_CHUNK = 1 << 20  # read a megabyte at a time: weights files can be larger than memory allows twice


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the file at ``path``, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
