"""``inhernet-bench compare`` end to end on a tiny random BERT classifier saved as a Hugging Face directory, with a
tiny CSV for training and one for testing: a row per method that applies, verdicts by the 2 s.e. rule, a
recommendation naming a row, the test split read once per final score, and a rerun resumed from the parts."""

from __future__ import annotations

import collections
import csv
import json
import random
from pathlib import Path

import pytest
import torch

from cli_runner import invoke
from inhernet.sources.data import TokenizedText
from inhernet_bench import BenchConfig
from inhernet_bench.cli import main as bench_main
from inhernet_bench.compare import COMPARE_METHODS, not_applicable, student_builder, user_preset
from inhernet_bench.stats import score, verdict
from tiny_models import cnn, gpt2_tiny, llama_tiny

WORDS = ["good", "bad", "film", "great", "awful", "the", "a", "is", "was", "movie", "plot", "acting", "fine", "boring"]
N_TRAIN, N_TEST = 60, 20


def _write_csv(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        label = rng.choice(["pos", "neg"])
        cue = rng.choice(["good", "great"] if label == "pos" else ["bad", "awful"])
        words = [*rng.choices(WORDS[5:], k=rng.randint(3, 8)), cue]
        lines.append((" ".join(rng.sample(words, len(words))), label))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *lines])


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
        GPT2Config,
        GPT2LMHeadModel,
    )

    root = tmp_path_factory.mktemp("compare")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=16, num_labels=2)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=16, bos_token_id=2, eos_token_id=3))
    for name, model in (("bert", BertForSequenceClassification(config)), ("gpt", gpt)):
        model.save_pretrained(root / name)
        BertTokenizerFast(vocab=vocab).save_pretrained(root / name)
    _write_csv(root / "train.csv", N_TRAIN, 0)
    _write_csv(root / "test.csv", N_TEST, 1)
    return {"bert": root / "bert", "gpt": root / "gpt", "train": root / "train.csv", "test": root / "test.csv"}


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """Examples read per tokenized data set (by its length: the training file's or the test file's)."""
    reads: collections.Counter = collections.Counter()
    get = TokenizedText.__getitem__

    def counted(self: TokenizedText, index: int):
        reads[len(self)] += 1
        return get(self, index)

    monkeypatch.setattr(TokenizedText, "__getitem__", counted)
    return reads


def test_compare_a_tiny_bert_on_a_csv(tmp_path, assets, monkeypatch, capsys):
    args = ["compare", assets["bert"], "--data", assets["train"], "--test", assets["test"], "--budget", 0.5,
            "--seeds", 2, "--steps", 4, "--tune-steps", 2, "--batch-size", 8, "--curve-points", 2,
            "--part-dir", tmp_path / "parts", "--json", tmp_path / "compare.json"]
    reads = _count_reads(monkeypatch)
    code, stdout, err = invoke(monkeypatch, capsys, *args, main=bench_main)
    assert code == 0, err
    result = json.loads((tmp_path / "compare.json").read_text())
    rows = {m["name"]: m for m in result["methods"]}
    assert list(rows) == list(COMPARE_METHODS)  # a BERT has a conventional student and a stack of blocks
    assert result["test_count"] == N_TEST and result["curve_split"] == "validation" and result["tuning"]
    # the test split: once for the teacher, once per (method, seed) run, once per experts-merged score
    runs = [run for m in result["methods"] for run in m["per_seed"]]
    assert len(runs) == 2 * len(rows)
    assert reads[N_TEST] == N_TEST * (1 + len(runs) + sum("merged" in run for run in runs))

    scores = {name: score([run["final"] for run in m["per_seed"]], N_TEST) for name, m in rows.items()}
    best = max(scores, key=lambda name: scores[name].mean)
    assert rows[best]["verdict"] == "best"
    for name, m in rows.items():
        assert m["se"] == pytest.approx(scores[name].se)
        if name != best:
            assert m["verdict"] == verdict(scores[name], scores[best])
        assert m["latency_ratio"] > 0
    named = [name for name in rows if name in result["recommendation"]]
    assert named and result["recommendation"].startswith(("use ", "tie between "))
    assert result["recommendation"] in " ".join(stdout.split())  # printed (rich may wrap it)

    code, stdout, err = invoke(monkeypatch, capsys, *args, main=bench_main)  # resumed: every run is a part
    assert code == 0, err
    assert stdout.count("part found") == len(runs)
    again = json.loads((tmp_path / "compare.json").read_text())
    assert [m["per_seed"] for m in again["methods"]] == [m["per_seed"] for m in result["methods"]]


def test_methods_that_do_not_apply_are_left_out_with_the_reason():
    teacher, _ = cnn()
    assert student_builder(teacher, 10) is None

    class Opened:  # what user_preset reads of an opened source
        source = type("S", (), {"model": "a tiny CNN"})()
        data = type("D", (), {"classes": ("a", "b"), "metric": "accuracy"})()

    Opened.teacher = teacher
    preset = user_preset("tiny", Opened(), list(range(10)), list(range(5)), 4)  # type: ignore[arg-type]
    assert set(preset.excluded) == {"kd-student", "layerdrop-kd"}
    assert preset.methods == ("inhernet", "inhernet-paper", "prune-kd", "svd-kd")
    assert "BERT" in preset.excluded["kd-student"] and "stack" in preset.excluded["layerdrop-kd"]


def test_a_causal_lm_is_pruned_only_where_its_mlps_are_gated():
    gpt2, llama = gpt2_tiny()[0], llama_tiny()[0]
    assert set(not_applicable(gpt2, has_student=student_builder(gpt2, None) is not None, lm=True)) == {
        "kd-student", "prune-kd"
    }
    assert student_builder(llama, None) is not None and not_applicable(llama, has_student=True, lm=True) == {}


def test_the_curve_split_is_test_or_validation():
    with pytest.raises(ValueError, match="curve_split"):
        BenchConfig(curve_split="train")  # type: ignore[arg-type]


def test_a_method_that_does_not_apply_is_refused_with_the_reason(assets, monkeypatch, capsys):
    code, _, err = invoke(
        monkeypatch, capsys, "compare", assets["gpt"], "--data", assets["train"], "--methods", "inhernet,prune-kd",
        main=bench_main,
    )
    assert code == 2 and "leaves out 'prune-kd'" in err and "no gated MLP" in err, err


def test_data_of_the_wrong_kind_fails_in_one_line(assets, monkeypatch, capsys):
    code, _, err = invoke(monkeypatch, capsys, "compare", "timm:test_resnet", "--data", assets["train"], main=bench_main)
    assert code == 2 and "is an image model: give an image folder" in err and err.count("\n") == 1
