"""The ``fashion-dual`` preset: the dual encoder model, its captions and data, the cached teacher, the student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from inhernet import InherConfig, inherit
from inhernet.dual import DUAL_METRICS
from inhernet_bench.presets import fashion_dual as fd
from inhernet_bench.presets.dual_encoder import DualEncoder
from inhernet_bench.presets.fashion import FASHION_CLASSES
from inhernet_bench.presets.registry import get_preset


class TinyImageTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


def tiny_dual() -> tuple[DualEncoder, dict[str, torch.Tensor]]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    text = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=16), add_pooling_layer=False)
    model = DualEncoder(TinyImageTower(), text, 8, 16, embed_dim=12).eval()
    ids = torch.randint(3, 50, (3, 6))
    ids = ids[torch.tensor([0, 1, 0, 2, 1])]  # repeated captions, as in a batch of class captions
    mask = torch.ones_like(ids)
    mask[3, 4:] = 0
    return model, {"pixel_values": torch.randn(5, 3, 8, 8), "input_ids": ids, "attention_mask": mask}


def test_dual_encoder_dedup_matches_one_caption_at_a_time() -> None:
    model, batch = tiny_dual()
    with torch.no_grad():
        out = model(**batch)
        one_by_one = torch.cat([
            model.encode_text(batch["input_ids"][i : i + 1], batch["attention_mask"][i : i + 1]) for i in range(5)
        ])
    assert torch.allclose(out.text_embeds, one_by_one, atol=1e-6)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(5))
    assert torch.allclose(out.logits_per_image, model.logit_scale.exp() * out.image_embeds @ out.text_embeds.T)


def test_dual_encoder_inherits_at_full_rank() -> None:
    model, batch = tiny_dual()
    with torch.no_grad():
        want = model(**batch)
        student = inherit(model, InherConfig(rank="full", experts=3), calib=[batch], progress=False).eval()
        got = student(**batch)
    for key in ("image_embeds", "text_embeds"):
        assert (getattr(got, key) - getattr(want, key)).abs().max() <= 1e-4


def test_captions_cover_every_class_and_template() -> None:
    texts = fd.captions()
    assert len(texts) == len(FASHION_CLASSES) * len(fd.TEMPLATES) == len(set(texts))
    assert texts[fd.CAPTION_NAMES.index("an ankle boot") * len(fd.TEMPLATES) + 1] == "a grey picture of an ankle boot."


def test_preset_is_registered_for_contrastive_kd() -> None:
    preset = get_preset("fashion-dual")
    assert preset.metric in DUAL_METRICS
    assert preset.distill_options["loss"] == "contrastive"
    assert {"inhernet", "kd-student"} <= set(preset.methods)


@pytest.mark.assets
def test_pairs_match_their_class_and_are_deterministic() -> None:
    pairs = fd.FashionPairs("test", limit=40)
    example = pairs[3]
    assert example["pixel_values"].shape == (3, fd.IMAGE_SIZE, fd.IMAGE_SIZE)
    caption = int(pairs.caption[3])
    assert caption // len(fd.TEMPLATES) == int(example["labels"])
    assert torch.equal(example["input_ids"], pairs.input_ids[caption])
    assert torch.equal(pairs.caption, fd.FashionPairs("test", limit=40).caption)
    assert len({int(c) % len(fd.TEMPLATES) for c in pairs.caption}) > 4  # the templates vary
    calib = fd.fashion_dual_calib(30)
    assert len(calib) == 1 and "labels" not in calib[0] and len(calib[0]["input_ids"]) == 30


@pytest.mark.assets
def test_student_has_at_least_the_asked_parameters() -> None:
    student = fd.fashion_dual_student(3_000_000)
    n = sum(p.numel() for p in student.parameters())
    assert 3_000_000 <= n <= 3_600_000
    assert student.text_tower.config.vocab_size == 30522  # MiniLM's tokenizer feeds it


@pytest.mark.assets
def test_teacher_is_built_by_the_converging_builder_then_loaded(tmp_path: Path, monkeypatch) -> None:
    from inhernet_bench.presets.teacher_cache import TeacherMissingError, build_teacher

    monkeypatch.setenv("INHERNET_HOME", str(tmp_path))
    monkeypatch.setattr(fd, "TEACHER_RECIPE", {**fd.TEACHER_RECIPE, "train_limit": 48, "val_examples": 8,
                        "test_limit": 40, "batch_size": 16, "eval_every": 2, "patience": 1, "max_steps": 4})
    with pytest.raises(TeacherMissingError, match="inhernet-bench teacher --preset fashion-dual"):
        fd.load_fashion_dual_teacher()
    record = build_teacher(fd.teacher_spec(), log=lambda _: None)
    # every class keeps at least one validation pair: 10 of the 48
    assert record["train_examples"] == 38 and set(record["test"]) == {*DUAL_METRICS, "count"}
    assert record["test"]["count"] == 40 and record["steps"] in (2, 4)
    cached = fd.load_fashion_dual_teacher()
    start = fd.build_teacher()
    batch = fd.fashion_dual_calib(8)[0]
    with torch.no_grad():
        a, b = cached(**batch), start(**batch)
    assert not torch.equal(a.image_embeds, b.image_embeds)  # the aligned weights were kept
    assert torch.equal(a.text_embeds, cached(**batch).text_embeds) and not cached.training


def test_full_test_reads_every_test_pair(monkeypatch) -> None:
    limits: dict[str, int | None] = {}

    class Pairs(list):
        def __init__(self, split: str, limit: int | None = None) -> None:
            super().__init__(range(3))
            limits[split] = limit

    monkeypatch.setattr(fd, "FashionPairs", Pairs)
    preset = get_preset("fashion-dual")
    preset.data(32)
    assert limits["test"] == fd.TEST_SIZE  # short benchmarks keep the first 1,000 pairs
    preset.data(32, **preset.full_test)
    assert limits["test"] is None and limits["train"] is None  # bench --full-test: all 10,000


@pytest.mark.assets
@pytest.mark.parametrize("name", ["fashion-effnet", "fashion-dual"])
def test_the_bench_validates_on_the_teachers_own_validation_split(name) -> None:
    from inhernet_bench.presets import fashion
    from inhernet_bench.presets.fashion import read_fashion_mnist

    recipe = {"fashion-effnet": fashion.TEACHER_RECIPE, "fashion-dual": fd.TEACHER_RECIPE}[name]
    held = get_preset(name).validation()
    labels = read_fashion_mnist("train")[1]
    assert len(set(held)) == len(held) and min(held) >= 0 and max(held) < len(labels)
    assert abs(len(held) - recipe["val_examples"]) <= len(FASHION_CLASSES)  # about val_examples, by class
    assert set(labels[held].tolist()) == set(range(len(FASHION_CLASSES)))
