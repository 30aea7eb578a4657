"""``inhernet.sources``: model specs, weights files, labels, tables, splits and ``source.json``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from inhernet.sources import (
    DataOptions,
    ModelSpec,
    Source,
    build_model,
    encode_labels,
    image_folder,
    load_state_dict,
    parse_model_spec,
    read_source,
    read_table,
    split,
    write_source,
)


# -- labels --------------------------------------------------------------------------------------------
def test_integer_labels_are_their_own_indices():
    ids, classes = encode_labels(["2", "0", "10"])
    assert ids == [2, 0, 10] and classes == tuple(str(i) for i in range(11))  # not sorted as strings


def test_names_are_sorted_and_a_given_class_list_wins():
    assert encode_labels(["pos", "neg", "pos"]) == ([1, 0, 1], ("neg", "pos"))
    # a recorded list maps a subset by name, or by index into it
    assert encode_labels(["pos", "1"], ("pos", "neg")) == ([0, 1], ("pos", "neg"))
    with pytest.raises(ValueError, match=r"labels 'meh' are not among the model's 2 classes \(pos, neg\)"):
        encode_labels(["pos", "meh"], ("pos", "neg"))


# -- tables --------------------------------------------------------------------------------------------
def test_read_table_csv_tsv_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",1\nbye,0\n')
    (tmp_path / "a.tsv").write_text("label\ttext\n1\thello, world\n0\tbye\n")
    (tmp_path / "a.jsonl").write_text('{"text": "hello, world", "label": 1}\n\n{"text": "bye", "label": 0}\n')
    for name in ("a.csv", "a.tsv", "a.jsonl"):
        assert read_table(tmp_path / name, ["text", "label"]) == {"text": ["hello, world", "bye"], "label": ["1", "0"]}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "text,sentiment\nhi,1\n", r"row 2: no value in column 'label' \(columns: 'text', 'sentiment'\)"),
        ("a.csv", "text,label\n", "has no data rows"),
        ("a.jsonl", '{"text": "hi", "label": 1}\n{"text": \n', "line 2: not valid JSON"),
        ("a.jsonl", '["hi", 1]\n', "line 1: expected a JSON object per line"),
        ("a.txt", "hi\n", "must be a .csv, .tsv, .jsonl, .ndjson file"),
    ],
)
def test_read_table_errors_name_the_file_and_row(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        read_table(tmp_path / name, ["text", "label"])


def test_read_table_names_the_encoding_option(tmp_path):
    (tmp_path / "a.csv").write_bytes("text,label\ncafé,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"is not utf-8 text .*\(--encoding\), e\.g\. latin-1"):
        read_table(tmp_path / "a.csv", ["text", "label"])
    assert read_table(tmp_path / "a.csv", ["text"], encoding="latin-1") == {"text": ["café"]}
    with pytest.raises(ValueError, match="not a known text encoding"):
        DataOptions(encoding="utf-99")


# -- images --------------------------------------------------------------------------------------------
def test_image_folder_maps_a_partial_folder_by_recorded_names(tmp_path):
    from PIL import Image

    for label in ("b", "c"):
        (tmp_path / label).mkdir()
        Image.new("L", (10, 14), color=200).save(tmp_path / label / "x.png")  # grayscale becomes RGB
    data = image_folder(tmp_path, DataOptions(image_size=8), classes=("a", "b", "c"))
    assert data.classes == ("a", "b", "c") and data.metric == "accuracy"
    image, label = data.dataset[1]
    assert image.shape == (3, 8, 8) and label == 2


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "x.png").write_bytes(b"not a png")
    data = image_folder(tmp_path, DataOptions(image_size=8))
    with pytest.raises(ValueError, match=r"cannot read image .*x\.png"):
        data.dataset[0]


# -- splits --------------------------------------------------------------------------------------------
def test_split_is_deterministic_disjoint_and_complete():
    data = list(range(50))
    train, val = split(data, 0.2, seed=3)
    assert len(val) == 10 and sorted([*train, *val]) == data
    again_train, again_val = split(data, 0.2, seed=3)
    assert list(val) == list(again_val) and list(train) == list(again_train)
    assert list(split(data, 0.2, seed=4)[1]) != list(val)
    assert split(data, 0.0)[1] is None
    with pytest.raises(ValueError, match="leave none for training"):
        split([1], 0.5)


# -- models and weights --------------------------------------------------------------------------------
def test_torchvision_spec_loads_a_nested_ddp_checkpoint(tmp_path):
    torch.manual_seed(0)
    reference = build_model(ModelSpec("torchvision", "resnet18", num_classes=3))
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "r18.pth")
    spec = parse_model_spec("torchvision:resnet18", weights=tmp_path / "r18.pth", num_classes=3)
    model = build_model(spec)
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True))


def test_random_parts_are_the_same_on_every_build():
    spec = ModelSpec("timm", "test_resnet", num_classes=2)
    state = torch.random.get_rng_state()
    first, second = build_model(spec).state_dict(), build_model(spec).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_weights_are_checked_against_the_recorded_checksum(tmp_path):
    from safetensors.torch import save_file

    model = nn.Linear(2, 2)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    spec = parse_model_spec("timm:test_resnet", weights=tmp_path / "w.safetensors", num_classes=2)
    save_file({"weight": torch.zeros(2, 2)}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="changed since they were recorded"):
        build_model(spec)


def test_pickled_code_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(1), "model": nn.Linear(1, 1)}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="cannot read weights"):
        load_state_dict(tmp_path / "w.pth")


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("resnet18", {}, "unknown model 'resnet18': expected torchvision:NAME"),
        ("torchvision:", {}, "names no model"),
        ("torchvision:resnet18", {"task": "lm"}, "task 'lm' needs a Hugging Face causal LM"),
        ("timm:test_resnet", {"weights": "w.onnx"}, "not found"),
        ("timm:test_resnet", {"num_classes": 0}, "num_classes must be an int >= 1"),
    ],
)
def test_bad_model_specs(text, kwargs, message):
    with pytest.raises(ValueError, match=message):
        parse_model_spec(text, **kwargs)


def test_hugging_face_task_comes_from_the_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert parse_model_spec(str(tmp_path)).task == "lm"
    assert parse_model_spec(f"hf:{tmp_path}", task="classify").task == "classify"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="pass --task classify or --task lm"):
        parse_model_spec(str(tmp_path))
    with pytest.raises(ValueError, match="drop the weights file"):
        parse_model_spec(str(tmp_path), task="lm", weights="w.pth")


# -- source.json ---------------------------------------------------------------------------------------
def test_source_round_trip_and_errors(tmp_path):
    source = Source(ModelSpec("timm", "test_resnet", num_classes=2), DataOptions(image_size=32), ("cat", "dog"))
    (tmp_path / "inhernet.json").write_text("{}")
    write_source(tmp_path, source)
    assert read_source(tmp_path) == source
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inhernet.json", "source.json"]  # no temporary left
    (tmp_path / "source.json").write_text(json.dumps({"format_version": 1, "model": {"name": "x"}}))
    with pytest.raises(ValueError, match=r"source\.json is malformed"):
        read_source(tmp_path)
    (tmp_path / "source.json").unlink()
    with pytest.raises(ValueError, match="was not written by inhernet compress"):
        read_source(tmp_path)
