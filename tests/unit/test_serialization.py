"""save -> load gives identical outputs; tampered or missing files fail clearly; saves are atomic."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import tiny_models as tm
from inhernet import InherBlock, InherConfig, inherit, load, save

serialization = importlib.import_module("inhernet.serialization")
CONFIG = serialization.CONFIG_NAME
weights_path = serialization.weights_path


def _files(path: Path) -> list[str]:
    """What a save leaves in ``path``: the JSON and the weights file it names, nothing else."""
    return sorted(p.name for p in path.iterdir())

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
    assert _files(out) == sorted([CONFIG, weights_path(out).name])

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
    weights = weights_path(tmp_path)
    assert meta["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights.name == f"model-{meta['weights']['sha256'][:16]}.safetensors"  # named after its content
    assert meta["layers"]["0"]["rank"] == 12 and meta["layers"]["0"]["experts"] == 3
    assert b"\x80\x04" not in weights.read_bytes()[:16]  # not a pickle protocol header


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
    meta["layers"]["0"]["rank"] -= 1


def _rank_beyond_full(meta):
    meta["layers"]["0"]["rank"] = 10**9


def _many_experts(meta):
    meta["layers"]["0"]["experts"] = 10**6


def _weights_file(name):
    def edit(meta):
        meta["weights"]["file"] = name

    return edit


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
    pytest.param(_rank_beyond_full, "beyond its full rank 12", id="rank-beyond-full"),
    pytest.param(_many_experts, "ranks and experts need", id="more-parameters-than-the-file"),
    pytest.param(_weights_file("../model.safetensors"), "bare", id="weights-in-parent"),
    pytest.param(_weights_file("/etc/model.safetensors"), "bare", id="weights-absolute"),
    pytest.param(_weights_file("sub/model.safetensors"), "bare", id="weights-in-subdirectory"),
    pytest.param(_weights_file(".."), "bare", id="weights-dotdot"),
    pytest.param(_weights_file("inhernet.json"), "bare", id="weights-not-safetensors"),
    pytest.param(_set_version, "format_version", id="format-version"),
    pytest.param(_bad_spec, "malformed spec", id="malformed-spec"),
    pytest.param(_unknown_layer, "no module 'nope'", id="unknown-layer"),
]


@pytest.mark.parametrize(("edit", "message"), META_CASES)
def test_tampered_json_is_refused_and_base_is_untouched(saved: Path, edit, message: str, monkeypatch) -> None:
    _edit_meta(saved, edit)
    base = tm.mlp()[0]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    modules = dict(base.named_modules())
    built = []
    monkeypatch.setattr(InherBlock, "__init__", _recording(InherBlock.__init__, built))
    with pytest.raises(ValueError, match=message):
        load(saved, base=base)
    assert dict(base.named_modules()) == modules  # the very same modules: nothing converted
    assert tm.same_state(base.state_dict(), before)  # and no value overwritten
    if message in ("bare", "beyond its full rank 12", "ranks and experts need"):
        assert built == []  # refused before a block was allocated


def _recording(init, built: list):
    def record(self, *args, **kwargs):
        built.append(type(self).__name__)
        init(self, *args, **kwargs)

    return record


def test_a_failure_after_conversion_restores_base(saved: Path, monkeypatch) -> None:
    """The tensors are checked after the blocks are built; a mismatch there puts the dense layers back."""
    base = tm.mlp()[0]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    modules = dict(base.named_modules())

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure while copying tensors")

    monkeypatch.setattr(nn.Module, "load_state_dict", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        load(saved, base=base)
    monkeypatch.undo()
    assert dict(base.named_modules()) == modules and tm.same_state(base.state_dict(), before)
    assert not any(isinstance(m, InherBlock) for m in base.modules())


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
    weights = weights_path(saved)
    weights.write_bytes(damage(weights.read_bytes()))
    if fix_checksum:
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        _edit_meta(saved, lambda meta: meta["weights"].update(sha256=digest))
    with pytest.raises(ValueError, match=message) as info:
        load(saved, base=tm.mlp()[0])
    assert weights.name in str(info.value)  # the message names the file


def test_missing_files(saved: Path, tmp_path_factory) -> None:
    weights_path(saved).unlink()
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


def test_a_crash_between_the_two_renames_leaves_the_earlier_pair_loadable(saved: Path, monkeypatch) -> None:
    """The process dies after the new weights are in place but before the JSON is: simulated by an
    exception that save() does not clean up after (as a killed process would not)."""
    earlier = _student(tm.mlp)
    earlier_weights = weights_path(saved).name
    atomic = importlib.import_module("inhernet._atomic")
    real_replace = os.replace

    class Killed(BaseException):
        pass

    def replace(src, dst):
        if Path(dst).name == CONFIG:
            raise Killed  # between the renames
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    monkeypatch.setattr(serialization.Path, "unlink", lambda self, missing_ok=False: None)  # a crash cleans nothing
    with pytest.raises(Killed):
        save(_jiggle(_student(tm.mlp), seed=5), saved)
    monkeypatch.undo()
    assert len([p for p in saved.iterdir() if p.suffix == ".safetensors"]) == 2  # the new weights landed
    assert weights_path(saved).name == earlier_weights
    loaded = load(saved, base=tm.mlp()[0])  # the earlier pair, whole
    assert tm.same_state(loaded.state_dict(), earlier.state_dict())
    student = _jiggle(_student(tm.mlp), seed=6)
    save(student, saved)  # the next save removes the orphan
    assert _files(saved) == sorted([CONFIG, weights_path(saved).name])
    assert tm.same_state(load(saved, base=tm.mlp()[0]).state_dict(), student.state_dict())


def test_a_directory_with_the_earlier_fixed_weights_name_still_loads_and_is_replaced(saved: Path) -> None:
    legacy = saved / serialization.WEIGHTS_NAME
    weights_path(saved).rename(legacy)
    _edit_meta(saved, lambda meta: meta["weights"].update(file=legacy.name))
    assert tm.same_state(load(saved, base=tm.mlp()[0]).state_dict(), _student(tm.mlp).state_dict())
    save(_student(tm.mlp), saved)
    assert _files(saved) == sorted([CONFIG, weights_path(saved).name]) and not legacy.exists()


def test_save_overwrites_an_earlier_save(saved: Path) -> None:
    student = _jiggle(_student(tm.mlp), seed=7).eval()
    save(student, saved)
    assert _files(saved) == sorted([CONFIG, weights_path(saved).name])  # the earlier weights are gone
    assert tm.same_state(load(saved, base=tm.mlp()[0]).state_dict(), student.state_dict())


def test_load_without_base_rebuilds_a_timm_architecture_from_source_json(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from inhernet.sources import Source, build_model, parse_model_spec, write_source

    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.safetensors"
    save_file(build_model(parse_model_spec("timm:test_resnet", num_classes=3)).state_dict(), teacher_file)
    spec = parse_model_spec("timm:test_resnet", weights=teacher_file, num_classes=3)
    student = inherit(build_model(spec), InherConfig(budget=0.5, experts=2, init="svd"), progress=False)
    student = _jiggle(student, seed=4).eval()
    out = tmp_path / "out"
    save(student, out)
    write_source(out, Source(spec))
    teacher_file.unlink()  # the teacher's weights are not needed: every tensor comes from the file
    loaded = load(out)
    x = torch.randn(2, 3, 32, 32)
    assert type(loaded).__name__ == type(student).__name__
    assert tm.same_state(loaded.state_dict(), student.state_dict())
    assert torch.equal(tm.run(loaded, x), tm.run(student, x))
    assert loaded.inhernet_config == student.inhernet_plan.config


def test_load_without_base_rebuilds_a_hugging_face_architecture(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from inhernet.sources import Source, build_model, parse_model_spec, write_source

    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=16, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    spec = parse_model_spec(str(tmp_path / "bert"), task="classify")
    student = _jiggle(inherit(build_model(spec), InherConfig(rank=8, experts=2, init="svd"), progress=False), 5)
    student.eval()
    save(student, tmp_path / "out")
    write_source(tmp_path / "out", Source(spec))
    loaded = load(tmp_path / "out")
    ids = torch.randint(0, 40, (2, 10))
    assert torch.equal(loaded(input_ids=ids).logits, student(input_ids=ids).logits)


def test_load_without_base_or_source_json_says_to_pass_base(saved: Path) -> None:
    with pytest.raises(ValueError, match=r"no source\.json.*pass base="):
        load(saved)
