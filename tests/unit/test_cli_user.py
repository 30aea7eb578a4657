"""``inhernet compress`` / ``train`` / ``eval`` end to end, on tiny models and data written to tmp_path.

Image side: timm's ``test_resnet`` (373k parameters) with a safetensors weights file, on a two-class
folder of random PNGs at 32 px. Text side: a random two-layer BERT classifier and GPT-2 LM saved with
a WordPiece tokenizer, on a CSV / JSONL file. The CLI runs in-process through ``main()`` (the real
entry point: one-line errors, exit codes), so the libraries are imported once.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import inhernet
from cli_runner import invoke
from inhernet.config import DEFAULT_PROBE_STEPS
from inhernet.sources import build_model, make_loader, open_source, read_source, split
from tiny_models import n_params, run

WORDS = ["good", "bad", "film", "great", "awful", "the", "a", "is", "was", "movie", "plot", "acting", "fine", "boring"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny models and data sets every test here reads (never written to by the tests)."""
    import timm
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        BertTokenizerFast,
        GPT2Config,
        GPT2LMHeadModel,
    )

    root = tmp_path_factory.mktemp("assets")
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        folder = root / "images" / label
        folder.mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")

    torch.manual_seed(0)
    save_file(timm.create_model("test_resnet", pretrained=False, num_classes=2).state_dict(), root / "resnet.safetensors")

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tokenizer = BertTokenizerFast(vocab=vocab)
    shape = {"vocab_size": len(vocab), "num_hidden_layers": 2, "num_attention_heads": 2}
    config = BertConfig(hidden_size=32, intermediate_size=64, max_position_embeddings=32, num_labels=2, **shape)
    bert, encoder = BertForSequenceClassification(config), BertModel(config)
    gpt = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=32, bos_token_id=2, eos_token_id=3
    ))
    for name, model in (("bert", bert), ("encoder", encoder), ("gpt", gpt)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)

    sentences = random.Random(0)
    rows = [(" ".join(sentences.choices(WORDS, k=sentences.randint(3, 12))), sentences.choice(["pos", "neg"]))
            for _ in range(24)]
    with open(root / "reviews.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    (root / "news.jsonl").write_text("".join(json.dumps({"body": text}) + "\n" for text, _ in rows))
    (root / "three.jsonl").write_text("".join(json.dumps({"text": t, "label": i % 3}) + "\n" for i, (t, _) in enumerate(rows)))
    return {
        "images": root / "images", "weights": root / "resnet.safetensors", "bert": root / "bert",
        "gpt": root / "gpt", "encoder": root / "encoder", "csv": root / "reviews.csv", "jsonl": root / "news.jsonl",
        "three": root / "three.jsonl",
    }


def test_image_folder_compress_train_eval(tmp_path, assets, monkeypatch, capsys):
    out = tmp_path / "resnet"
    code, stdout, err = invoke(
        monkeypatch, capsys, "compress", "timm:test_resnet", "--weights", assets["weights"],
        "--data", assets["images"], "--image-size", 32, "--budget", 0.3, "--batch-size", 4, "--out", out,
    )
    assert code == 0, err
    assert "factorised" in stdout and "warning" not in err
    assert f"saved to {out}; next: inhernet train {out}" in stdout.replace("\n", "")
    weights = inhernet.serialization.weights_path(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["inhernet.json", "source.json", weights.name])
    source = read_source(out)
    assert source.classes == ("cat", "dog") and source.model.num_classes == 2 and source.data.image_size == 32
    teacher = build_model(source.model)
    meta = json.loads((out / "inhernet.json").read_text())
    assert 0.98 * 0.3 * n_params(teacher) <= meta["params"] <= 0.3 * n_params(teacher)  # the budget is met

    compressed = inhernet.serialization.weights_path(out).read_bytes()
    code, stdout, err = invoke(
        monkeypatch, capsys, "train", out, "--data", assets["images"], "--steps", 2, "--batch-size", 4,
        "--val-fraction", 0.25, "--save-last",  # whatever the validation says (the default keeps the better)
    )
    assert code == 0, err
    assert "trained 2 steps" in stdout and "validation accuracy" in stdout
    assert inhernet.serialization.weights_path(out).read_bytes() != compressed  # the trained student replaced it
    assert json.loads((out / "inhernet.json").read_text())["config"] == meta["config"]  # kept on re-save

    code, stdout, err = invoke(monkeypatch, capsys, "eval", out, "--data", assets["images"], "--json", tmp_path / "e.json")
    assert code == 0, err
    assert "accuracy" in stdout and "teacher" in stdout
    rows = {r["name"]: r for r in json.loads((tmp_path / "e.json").read_text())["models"]}
    # eval measured exactly what inhernet.load rebuilds on a fresh teacher, on the same data
    student = inhernet.load(out, base=build_model(source.model))
    loader = make_loader(open_source(source, assets["images"]).data.dataset, 8)
    assert rows["inhernet"]["accuracy"] == inhernet.evaluate(student, loader)["accuracy"]
    assert rows["teacher"]["accuracy"] == inhernet.evaluate(teacher, loader)["accuracy"]
    assert rows["inhernet"]["params"] == meta["params"] and rows["teacher"]["params"] == n_params(teacher)
    printed = {line.split("│")[1].strip(): line for line in stdout.splitlines() if line.count("│") > 2}
    assert f"{meta['params']:,} (" in printed["inhernet"] and f"{n_params(teacher):,}" in printed["teacher"]
    assert f"{rows['inhernet']['accuracy']:.4f}" in printed["inhernet"]
    assert 0 < rows["inhernet"]["macs"] < rows["teacher"]["macs"]

    images = next(iter(loader))[0]
    inhernet.save(student, tmp_path / "again")
    again = inhernet.load(tmp_path / "again", base=build_model(source.model))
    assert torch.equal(run(again, images), run(student, images))


def test_text_classifier_compress_train_eval(tmp_path, assets, monkeypatch, capsys):
    out = tmp_path / "bert"
    code, stdout, err = invoke(
        monkeypatch, capsys, "compress", assets["bert"], "--data", assets["csv"], "--budget", 0.5,
        "--batch-size", 8, "--out", out,
    )
    assert code == 0, err
    source = read_source(out)
    # string labels: sorted names; max_length: the default capped at the model's 32 positions
    assert source.model.task == "classify" and source.classes == ("neg", "pos") and source.data.max_length == 32
    teacher = build_model(source.model)
    params = json.loads((out / "inhernet.json").read_text())["params"]
    assert 0.98 * 0.5 * n_params(teacher) <= params <= 0.5 * n_params(teacher)

    train = ["train", out, "--data", assets["csv"], "--batch-size", 8, "--save-to", tmp_path / "trained",
             "--log-dir", tmp_path / "logs"]
    code, stdout, err = invoke(monkeypatch, capsys, *train, "--steps", 2)
    assert code == 0, err
    assert read_source(tmp_path / "trained") == source  # self-contained: trainable and evaluable again
    code, stdout, err = invoke(monkeypatch, capsys, *train, "--steps", 3, "--resume", "last")
    assert code == 0, err
    assert "trained 3 steps" in stdout  # continued from the checkpoint of step 2
    assert [p.name for p in (tmp_path / "logs" / "checkpoints").iterdir()] == ["last.ckpt"]

    code, stdout, err = invoke(
        monkeypatch, capsys, "eval", tmp_path / "trained", "--data", assets["csv"], "--val-fraction", 0.25,
        "--json", tmp_path / "e.json",
    )
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["examples"] == 6 and result["metric"] == "accuracy" and "accuracy" in stdout
    student = inhernet.load(tmp_path / "trained", base=build_model(source.model))
    _, val = split(open_source(source, assets["csv"]).data.dataset, 0.25, seed=0)
    assert result["models"][1]["accuracy"] == inhernet.evaluate(student, make_loader(val, 8))["accuracy"]


def test_causal_lm_reports_perplexity_without_labels(tmp_path, assets, monkeypatch, capsys):
    out = tmp_path / "gpt"
    code, _, err = invoke(
        monkeypatch, capsys, "compress", f"hf:{assets['gpt']}", "--data", assets["jsonl"], "--text-column", "body",
        "--budget", 0.5, "--out", out,
    )
    assert code == 0, err
    assert read_source(out).model.task == "lm"  # from config.json's GPT2LMHeadModel
    meta = json.loads((out / "inhernet.json").read_text())  # the causal-LM default: part of the cut by blocks
    assert meta["config"]["drop_blocks"] == 1.0 and meta["drop"]["of"] == len(meta["drop"]["influence"])
    code, _, err = invoke(monkeypatch, capsys, "train", out, "--data", assets["jsonl"], "--steps", 1)
    assert code == 0, err
    code, stdout, err = invoke(monkeypatch, capsys, "eval", out, "--data", assets["jsonl"], "--json", tmp_path / "e.json")
    assert code == 0, err
    assert "perplexity" in stdout
    report = json.loads((tmp_path / "e.json").read_text())
    assert all(1 < r["perplexity"] < math.inf for r in report["models"])
    # Greedy continuations of the first three texts' first words, one column per model, printed too.
    continuations = report["continuations"]
    assert len(continuations) == 3 and all(set(c) == {"prompt", "teacher", "inhernet"} for c in continuations)
    assert all(c["prompt"] and c["prompt"].split()[0] in WORDS for c in continuations)
    assert "greedy continuations" in stdout and continuations[0]["prompt"][:10] in stdout
    code, _, err = invoke(monkeypatch, capsys, "eval", out, "--data", assets["jsonl"], "--prompt", "the film was",
                          "--new-tokens", 4, "--json", tmp_path / "p.json")
    assert code == 0, err
    assert [c["prompt"] for c in json.loads((tmp_path / "p.json").read_text())["continuations"]] == ["the film was"]


def test_an_encoder_without_a_head_gets_one_per_class_and_a_warning(tmp_path, assets, monkeypatch, capsys):
    out = tmp_path / "encoder"
    code, _, err = invoke(
        monkeypatch, capsys, "compress", assets["encoder"], "--task", "classify", "--data", assets["three"],
        "--budget", 0.5, "--out", out,
    )
    assert code == 0, err
    assert "names no classify architecture" in err
    source = read_source(out)
    assert source.model.num_classes == 3 and source.classes == ("0", "1", "2")
    code, _, err = invoke(monkeypatch, capsys, "eval", out, "--data", assets["three"], "--json", tmp_path / "e.json")
    assert code == 0, err
    # the new head is drawn from a fixed seed: eval rebuilt the teacher that compress inherited from
    teacher = build_model(source.model)
    loader = make_loader(open_source(source, assets["three"]).data.dataset, 8)
    rows = json.loads((tmp_path / "e.json").read_text())["models"]
    assert rows[0]["accuracy"] == inhernet.evaluate(teacher, loader)["accuracy"]


def test_eval_of_a_plain_model_spec(assets, monkeypatch, capsys):
    code, stdout, err = invoke(
        monkeypatch, capsys, "eval", "timm:test_resnet", "--weights", assets["weights"], "--data", assets["images"],
        "--image-size", 32,
    )
    assert code == 0, err
    assert "timm:test_resnet" in stdout and "accuracy" in stdout


@pytest.mark.parametrize("prune", ["0.2", "auto"])
def test_compress_with_pruning_saves_a_model_that_loads_from_its_source(tmp_path, assets, monkeypatch, capsys, prune):
    out = tmp_path / "resnet"
    code, stdout, err = invoke(
        monkeypatch, capsys, "compress", "timm:test_resnet", "--weights", assets["weights"], "--data", assets["images"],
        "--image-size", 32, "--budget", 0.3, "--batch-size", 4, "--init", "svd", "--prune", prune, "--out", out,
    )
    assert code == 0, err
    assert "of the channels (Torch-Pruning" in stdout
    meta = json.loads((out / "inhernet.json").read_text())
    assert meta["config"]["prune"] == (prune if prune == "auto" else float(prune))
    teacher = build_model(read_source(out).model)
    assert 0.98 * 0.3 * n_params(teacher) <= meta["params"] <= 0.3 * n_params(teacher)
    images = torch.randn(2, 3, 32, 32)
    rebuilt = inhernet.load(out)  # the pruned widths and the blocks, rebuilt from source.json alone
    again = inhernet.load(out, base=build_model(read_source(out).model))
    assert n_params(rebuilt) == meta["params"] and torch.equal(run(rebuilt, images), run(again, images))
    if prune == "0.2":
        assert meta["prune"]["ratio"] == 0.2 and meta["prune"]["spec"]
    else:
        record = meta["prune"]  # the share chosen among candidates bracketed by the budget, by the default probe
        low, high = record["bracket"]
        assert low <= record["ratio"] <= high and record["scores"][f"{record['ratio']:g}"] is not None
        assert record["probe_steps"] == DEFAULT_PROBE_STEPS == meta["config"]["prune_probe_steps"]
    code, stdout, err = invoke(monkeypatch, capsys, "eval", out, "--data", assets["images"])
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compress", "timm:test_resnet", "--data", "{tmp}/missing"], "image folder '{tmp}/missing' not found"),
        (["compress", "{bert}", "--data", "{tmp}/missing.csv"], "data file '{tmp}/missing.csv' not found"),
        (["compress", "{bert}", "--data", "{csv}", "--label-column", "sentiment"], "no value in column 'sentiment'"),
        (["compress", "torchvision:resnet1800", "--data", "{images}"], "did you mean torchvision:resnet18"),
        (["compress", "timm:no_such_net", "--data", "{images}"], "unknown timm image classifier 'no_such_net'"),
        (["compress", "{tmp}/no-model", "--data", "{images}"], "expected torchvision:NAME"),
        (["compress", "timm:test_resnet", "--data", "{csv}"], "is an image model: give an image folder"),
        (["compress", "timm:test_resnet", "--weights", "{tmp}/w.pth", "--data", "{images}"], "not found"),
        (
            ["compress", "timm:test_resnet", "--weights", "{weights}", "--num-classes", "3", "--data", "{images}"],
            "pass --num-classes",
        ),
        (["compress", "{bert}", "--data", "{csv}", "--max-length", "64"], "exceeds the model's 32 positions"),
        (["train", "{tmp}", "--data", "{images}"], "not a compressed model directory"),
        (["compress", "{bert}", "--data", "{csv}", "--prune", "1.5"], "1.5 is not a share in [0, 1)"),
        (["compress", "{bert}", "--data", "{csv}", "--prune", "most"], "'most' is neither 'auto' nor a number"),
    ],
)
def test_bad_inputs_fail_with_one_error_line(tmp_path, assets, monkeypatch, capsys, args, message):
    fill = {"tmp": tmp_path, **assets}
    argv = [a.format(**fill) for a in args]
    if argv[0] == "compress":
        argv += ["--out", str(tmp_path / "out")]
    code, _, err = invoke(monkeypatch, capsys, *argv)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert message.format(**fill) in errors[0]
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_budget_zero_is_refused_before_anything_loads(tmp_path, monkeypatch, capsys):
    code, _, err = invoke(
        monkeypatch, capsys, "compress", "timm:test_resnet", "--data", tmp_path, "--budget", 0, "--out", tmp_path / "o"
    )
    assert code == 2 and "--budget" in err and "Traceback" not in err


def test_eval_refuses_spec_options_for_a_compressed_directory(tmp_path, assets, monkeypatch, capsys):
    (tmp_path / "inhernet.json").write_text("{}")
    code, _, err = invoke(
        monkeypatch, capsys, "eval", tmp_path, "--weights", assets["weights"], "--data", assets["images"]
    )
    assert code == 2 and err.startswith("error: --weights describe a model spec")


@pytest.mark.parametrize("command", ["compress", "train", "eval"])
def test_help_has_an_example(command, monkeypatch, capsys):
    code, stdout, _ = invoke(monkeypatch, capsys, command, "--help")
    assert code == 0 and "Example:" in stdout and f"inhernet {command} " in stdout


def test_eval_compact_reports_the_deployable_form_and_latencies(tmp_path, assets, monkeypatch, capsys):
    monkeypatch.setenv("INHERNET_HOME", str(tmp_path / "home"))  # the cost table's cache
    out = tmp_path / "resnet"
    code, _, err = invoke(
        monkeypatch, capsys, "compress", "timm:test_resnet", "--weights", assets["weights"],
        "--data", assets["images"], "--image-size", 32, "--budget", 0.3, "--batch-size", 4, "--out", out,
    )
    assert code == 0, err
    code, stdout, err = invoke(
        monkeypatch, capsys, "eval", out, "--data", assets["images"], "--compact", "--json", tmp_path / "e.json"
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "e.json").read_text())["models"]
    assert [r["name"] for r in rows] == ["teacher", "inhernet", "inhernet-compact"]
    assert all(r["latency_ms"] > 0 for r in rows) and "ms / example" in stdout
    assert rows[2]["params"] <= 0.3 * rows[0]["params"]  # compact stays within the recorded budget
    assert list((tmp_path / "home" / "costs").glob("*.json"))
