"""Atomic file writes: every file inhernet writes appears whole or not at all."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_dir", "atomic_path", "atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``target`` to write to; it replaces ``target`` on success and is removed
    on failure. The file gets ordinary permissions (``0o666`` less the umask), not ``mkstemp``'s ``0o600``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(target: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``target`` atomically; returns ``target`` as a ``Path``."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(target)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """A temporary directory beside ``target`` that replaces it on success and is removed on failure."""
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    old = tmp.with_name(tmp.name + ".old")
    tmp.mkdir(parents=True)  # not mkdtemp: the directory gets ordinary permissions
    try:
        yield tmp
        if target.exists():
            os.replace(target, old)  # only now, with the new directory complete
        os.replace(tmp, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
