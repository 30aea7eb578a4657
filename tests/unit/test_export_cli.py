"""``inhernet export``: the round trip a user makes (compress -> train -> export -> load without inhernet -> the
metric `inhernet eval` reports), and bad input. Tiny models and data from test_cli_user's ``assets``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_cli_user import assets  # noqa: F401  (the fixture)

from cli_runner import invoke
from hf_without_inhernet import REFUSE_INHERNET
from inhernet.sources import make_loader, open_source, read_source

# A script that prints the accuracy of the exported model, without inhernet.
NO_INHERNET = REFUSE_INHERNET + """
import sys, torch
fmt, path, data = sys.argv[1:]
batches = torch.load(data)
if fmt == "pt2":
    run = torch.export.load(path).module()
elif fmt == "onnx":
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    run = lambda x: torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
else:
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
    run = lambda x: model(**x).logits
with torch.no_grad():
    right = sum(int((run(x).argmax(-1) == y).sum()) for x, y in batches)
print(right / sum(len(y) for _, y in batches))
"""


def accuracy_without_inhernet(fmt: str, path, batches, tmp_path) -> float:
    torch.save(batches, tmp_path / "batches.pt")
    proc = subprocess.run([sys.executable, "-c", NO_INHERNET, fmt, str(path), str(tmp_path / "batches.pt")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.split()[-1])


@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory):  # noqa: F811
    """The timm test_resnet compressed and trained for two steps by the CLI; its accuracy by `inhernet eval`."""
    out = tmp_path_factory.mktemp("trained") / "resnet"
    mp, capture = pytest.MonkeyPatch(), _Capture()
    try:
        for args in (
            ["compress", "timm:test_resnet", "--weights", assets["weights"], "--data", assets["images"],
             "--image-size", 32, "--budget", 0.3, "--batch-size", 4, "--out", out],
            ["train", out, "--data", assets["images"], "--steps", 2, "--batch-size", 4, "--save-last"],
            ["eval", out, "--data", assets["images"], "--json", out.parent / "eval.json"],
        ):
            code, _, err = invoke(mp, capture, *args)
            assert code == 0, err
    finally:
        mp.undo()
    rows = {r["name"]: r for r in json.loads((out.parent / "eval.json").read_text())["models"]}
    return out, rows["inhernet"]["accuracy"]


class _Capture:
    """capsys for a module fixture: `invoke` reads what the command printed (here: nothing kept)."""

    def readouterr(self):
        return "", ""


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_round_trip_gives_the_metric_eval_reports(trained, assets, tmp_path, monkeypatch, capsys, fmt):  # noqa: F811
    directory, accuracy = trained
    path = tmp_path / f"student.{fmt}"
    code, stdout, err = invoke(monkeypatch, capsys, "export", directory, path, "--format", fmt, "--data", assets["images"])
    assert code == 0, err
    assert f"wrote {path}" in stdout.replace("\n", "") and "differ from the student's by" in stdout
    dataset = open_source(read_source(directory), assets["images"]).data.dataset
    batches = [(x, y) for x, y in make_loader(dataset, 5)]
    assert accuracy_without_inhernet(fmt, path, batches, tmp_path) == accuracy


def test_existing_output_needs_overwrite(trained, assets, tmp_path, monkeypatch, capsys):  # noqa: F811
    directory, _ = trained
    path = tmp_path / "student.pt2"
    path.write_text("mine")
    args = ("export", directory, path, "--format", "pt2", "--data", assets["images"])
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert code == 2 and "exists: add --overwrite" in err and path.read_text() == "mine"
    code, _, err = invoke(monkeypatch, capsys, *args, "--overwrite")
    assert code == 0, err
    assert path.stat().st_size > 1000 and sorted(p.name for p in tmp_path.iterdir()) == ["student.pt2"]
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_text("x")
    code, _, err = invoke(monkeypatch, capsys, "export", directory, tmp_path / "dir", "--format", "onnx")
    assert code == 2 and "is not empty: add --overwrite" in err


@pytest.mark.parametrize(("fmt", "message"), [
    ("pt2", "--format pt2 traces the student on examples: give --data"),
    ("hf", "--format hf writes Hugging Face models; .* is timm:test_resnet .*: use pt2 or onnx"),
    ("gguf", "GGUF export writes llama-family causal LMs; .* export it as pt2, onnx or hf"),
])
def test_a_format_the_student_cannot_take_says_which_would_work(trained, tmp_path, monkeypatch, capsys, fmt, message):
    import re

    code, _, err = invoke(monkeypatch, capsys, "export", trained[0], tmp_path / "out", "--format", fmt)
    assert code == 2 and re.search(message, err), err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_gguf_of_a_compressed_llama(assets, tmp_path, monkeypatch, capsys):  # noqa: F811
    import gguf
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(assets["gpt"])
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, bos_token_id=2, eos_token_id=3,
    )).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    code, _, err = invoke(monkeypatch, capsys, "compress", tmp_path / "llama", "--data", assets["jsonl"],
                          "--text-column", "body", "--budget", 0.6, "--batch-size", 4, "--out", tmp_path / "s")
    assert code == 0, err
    kept = json.loads((tmp_path / "s" / "inhernet.json").read_text())
    with pytest.warns(UserWarning, match=r"rank-cut layers densified .* parameters"), \
            pytest.warns(UserWarning, match=r"WordPiece.*Wrote the weights without the tokenizer"):
        code, stdout, err = invoke(monkeypatch, capsys, "export", tmp_path / "s", tmp_path / "s.gguf", "--format", "gguf")
    assert code == 0, err
    assert f"wrote {tmp_path / 's.gguf'}" in stdout.replace("\n", "")
    reader = gguf.GGUFReader(tmp_path / "s.gguf")
    blocks = reader.fields["llama.block_count"].contents()
    assert blocks < 4 and len(reader.tensors) == 3 + 9 * blocks, kept  # the default drops blocks (causal LMs)
    assert "tokenizer.ggml.model" not in reader.fields  # this WordPiece tokenizer is not llama.cpp's BPE


def test_hf_round_trip_gives_the_metric_eval_reports(assets, tmp_path, monkeypatch, capsys):  # noqa: F811
    pytest.importorskip("inhernet.deploy.hf", reason="the hf exporter (issue 28, deliverable 1) is not merged yet")
    out, exported = tmp_path / "bert", tmp_path / "bert-hf"
    for args in (
        ["compress", assets["bert"], "--data", assets["csv"], "--budget", 0.5, "--batch-size", 8, "--out", out],
        ["train", out, "--data", assets["csv"], "--steps", 2, "--batch-size", 8, "--save-last"],
        ["eval", out, "--data", assets["csv"], "--json", tmp_path / "eval.json"],
        ["export", out, exported, "--format", "hf"],
    ):
        code, _, err = invoke(monkeypatch, capsys, *map(str, args))
        assert code == 0, err
    rows = {r["name"]: r for r in json.loads((tmp_path / "eval.json").read_text())["models"]}
    dataset = open_source(read_source(out), assets["csv"]).data.dataset
    batches = [({k: v for k, v in b.items() if k != "labels"}, b["labels"]) for b in make_loader(dataset, 8)]
    assert accuracy_without_inhernet("hf", exported, batches, tmp_path) == rows["inhernet"]["accuracy"]


def test_help_has_an_example(monkeypatch, capsys):
    code, stdout, _ = invoke(monkeypatch, capsys, "export", "--help")
    assert code == 0 and "Example:" in stdout and "inhernet export " in stdout
