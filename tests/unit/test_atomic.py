"""Atomic writes: the file appears whole or not at all, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from inhernet._atomic import atomic_path, atomic_write


def test_write_replaces_whole_with_umask_permissions(tmp_path):
    target = atomic_write(tmp_path / "sub" / "a.json", "old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]  # no temporary file left


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = atomic_write(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
