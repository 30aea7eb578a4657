"""save -> load gives identical outputs; tampered or missing files fail clearly; saves are atomic."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import tiny_models as tm
from inhernet import InherBlock, InherConfig, inherit, load, save

serialization = importlib.import_module("inhernet.serialization")
CONFIG, WEIGHTS = serialization.CONFIG_NAME, serialization.WEIGHTS_NAME

MODELS = {"mlp": tm.mlp, "cnn": tm.cnn, "conv1d": tm.conv1d_net, "bert": tm.bert_tiny, "gpt2": tm.gpt2_tiny}


def _jiggle(model: nn.Module, seed: int) -> nn.Module:
    """Move every parameter (gates included) off its init, as fine-tuning would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied parameters are visited once
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _student(factory, rank="full") -> nn.Module:
    teacher, _ = factory()
    student = inherit(teacher, InherConfig(rank=rank, experts=3, init="svd"), progress=False)
    return _jiggle(student, seed=1).eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_roundtrip_is_exact(tmp_path: Path, name: str) -> None:
    factory = MODELS[name]
    student = _student(factory)
    _, batch = factory()
    want = tm.run(student, batch)
    out = save(student, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG, WEIGHTS])

    base = _jiggle(factory()[0], seed=2)  # a same-architecture model with other weights
    loaded = load(out, base=base)
    assert loaded is base
    assert {m.training for m in loaded.modules()} == {False}, "blocks take the base's mode"
    assert tm.same_state(loaded.state_dict(), student.state_dict())
    assert torch.equal(tm.run(loaded, batch), want)
    ranks = {n: (m.rank, m.experts) for n, m in loaded.named_modules() if isinstance(m, InherBlock)}
    assert ranks == {n: (m.rank, m.experts) for n, m in student.named_modules() if isinstance(m, InherBlock)}


def test_a_loaded_model_keeps_its_config_when_saved_again(tmp_path: Path) -> None:
    teacher, _ = tm.mlp()
    config = InherConfig(rank=4, experts=2, init="svd", exclude=("4",))
    save(inherit(teacher, config, progress=False), tmp_path / "a")
    loaded = load(tmp_path / "a", base=tm.mlp()[0])
    resolved = config.resolved(teacher)  # the auto fields as the plan resolved them
    assert loaded.inhernet_config == resolved and resolved.family == "other"
    save(_jiggle(loaded, seed=3), tmp_path / "b")  # e.g. after fine-tuning
    first, second = (json.loads((tmp_path / d / CONFIG).read_text()) for d in ("a", "b"))
    assert second["config"] == first["config"] == resolved.to_dict()
    assert second["weights"]["sha256"] != first["weights"]["sha256"]


def test_gpt2_tied_weights_survive_roundtrip(tmp_path: Path) -> None:
    student = _student(tm.gpt2_tiny)
    assert student.lm_head.weight is student.transformer.wte.weight
    save(student, tmp_path)
    loaded = load(tmp_path, base=tm.gpt2_tiny()[0])
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded.lm_head.weight, student.lm_head.weight)


def test_no_pickle_in_the_files(tmp_path: Path) -> None:
    save(_student(tm.mlp), tmp_path)
    meta = json.loads((tmp_path / CONFIG).read_text())
    assert meta["weights"]["sha256"] == hashlib.sha256((tmp_path / WEIGHTS).read_bytes()).hexdigest()
    assert meta["layers"]["0"]["rank"] == 12 and meta["layers"]["0"]["experts"] == 3
    assert b"\x80\x04" not in (tmp_path / WEIGHTS).read_bytes()[:16]  # not a pickle protocol header


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    save(_student(tm.mlp), tmp_path)
    return tmp_path


def _edit_meta(path: Path, edit) -> None:
    meta = json.loads((path / CONFIG).read_text())
    edit(meta)
    (path / CONFIG).write_text(json.dumps(meta))


def _del(key):
    return lambda meta: meta.pop(key)


def _set_rank(meta):
    meta["layers"]["0"]["rank"] += 1


def _set_version(meta):
    meta["format_version"] = 99


def _bad_spec(meta):
    meta["layers"]["0"] = {"rank": "many"}


def _unknown_layer(meta):
    meta["layers"]["nope"] = meta["layers"]["0"]


META_CASES = [
    pytest.param(_del("layers"), "lacks the 'layers'", id="missing-layers"),
    pytest.param(_del("weights"), "lacks the 'weights'", id="missing-weights-entry"),
    pytest.param(_set_rank, "does not fit", id="changed-rank"),
    pytest.param(_set_version, "format_version", id="format-version"),
    pytest.param(_bad_spec, "malformed spec", id="malformed-spec"),
    pytest.param(_unknown_layer, "no module 'nope'", id="unknown-layer"),
]


@pytest.mark.parametrize(("edit", "message"), META_CASES)
def test_tampered_json_is_refused(saved: Path, edit, message: str) -> None:
    _edit_meta(saved, edit)
    with pytest.raises(ValueError, match=message):
        load(saved, base=tm.mlp()[0])


def test_invalid_json_is_refused(saved: Path) -> None:
    (saved / CONFIG).write_text('{"format_version": 1, "layers": {')
    with pytest.raises(ValueError, match="not valid JSON"):
        load(saved, base=tm.mlp()[0])


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(data: bytes) -> bytes:
    i = len(data) - 7
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def _garbage_header(data: bytes) -> bytes:
    return b"\xff" * 16 + data[16:]


DAMAGE_CASES = [
    pytest.param(_truncate, False, "does not match the checksum", id="truncated"),
    pytest.param(_flip, False, "does not match the checksum", id="flipped-byte"),
    pytest.param(_garbage_header, False, "does not match the checksum", id="garbage-header"),
    # The checksum was edited too: the file itself must still be refused cleanly.
    pytest.param(_truncate, True, "not a readable safetensors file", id="truncated-checksum-edited"),
    pytest.param(_garbage_header, True, "not a readable safetensors file", id="garbage-checksum-edited"),
]


@pytest.mark.parametrize(("damage", "fix_checksum", "message"), DAMAGE_CASES)
def test_damaged_weights_are_refused(saved: Path, damage, fix_checksum: bool, message: str) -> None:
    weights = saved / WEIGHTS
    weights.write_bytes(damage(weights.read_bytes()))
    if fix_checksum:
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        _edit_meta(saved, lambda meta: meta["weights"].update(sha256=digest))
    with pytest.raises(ValueError, match=message) as info:
        load(saved, base=tm.mlp()[0])
    assert WEIGHTS in str(info.value)  # the message names the file


def test_missing_files(saved: Path, tmp_path_factory) -> None:
    (saved / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load(saved, base=tm.mlp()[0])
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match=r"inhernet\.save"):
        load(empty, base=tm.mlp()[0])


class OtherNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(x)


BASES = [
    pytest.param(lambda: tm.cnn()[0], "base layer '0' is", id="other-layer-types"),
    pytest.param(
        lambda: nn.Sequential(nn.Linear(12, 30), nn.ReLU(), nn.Linear(30, 24), nn.GELU(), nn.Linear(24, 5)),
        "base layer '0' is",
        id="other-widths",
    ),
    pytest.param(OtherNet, "saved from a Sequential", id="other-class"),
    pytest.param(lambda: nn.Sequential(nn.Linear(12, 24)), "no module", id="fewer-layers"),
]


@pytest.mark.parametrize(("make_base", "message"), BASES)
def test_wrong_base_architecture_is_refused(saved: Path, make_base, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load(saved, base=make_base())


def test_load_needs_a_module_and_save_needs_blocks(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"base must be a torch\.nn\.Module"):
        load(saved, base="mlp")
    with pytest.raises(ValueError, match="no InherNet blocks"):
        save(tm.mlp()[0], tmp_path / "teacher")


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_failed_save_of_weights_leaves_previous_files(saved: Path, monkeypatch) -> None:
    before = _snapshot(saved)
    student = _jiggle(_student(tm.mlp), seed=5)

    def half_written(model, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "save_model", half_written)
    with pytest.raises(OSError, match="disk full"):
        save(student, saved)
    assert _snapshot(saved) == before  # same names (no temp files left) and same bytes
    monkeypatch.undo()
    assert tm.same_state(load(saved, base=tm.mlp()[0]).state_dict(), _student(tm.mlp).state_dict())


def test_failed_save_of_json_leaves_previous_files(saved: Path, monkeypatch) -> None:
    before = _snapshot(saved)
    student = _jiggle(_student(tm.mlp), seed=5)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(serialization.json, "dumps", boom)
    with pytest.raises(OSError, match="disk full"):
        save(student, saved)
    monkeypatch.undo()
    assert _snapshot(saved) == before
    load(saved, base=tm.mlp()[0])  # the previous pair still loads


def test_save_overwrites_an_earlier_save(saved: Path) -> None:
    student = _jiggle(_student(tm.mlp), seed=7).eval()
    save(student, saved)
    assert sorted(p.name for p in saved.iterdir()) == sorted([CONFIG, WEIGHTS])
    assert tm.same_state(load(saved, base=tm.mlp()[0]).state_dict(), student.state_dict())
