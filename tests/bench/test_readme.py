"""README.md's code runs as written: every block but the installation commands, in order, in one directory.

The directory holds exactly the inputs the README's commands name, made the way a user would have them:
``digits/train`` and ``digits/test`` (image folders of real MNIST test digits, one subfolder per class),
``resnet18-digits.pth`` (a torchvision ResNet-18 state dict with 10 classes), ``my-bert`` (a Hugging Face
BERT classifier directory with its tokenizer, tiny and random) and ``reviews.csv`` (``text``/``label``
rows). Python blocks run in a fresh interpreter; ``inhernet`` commands run in-process through the real
entry point (one-line errors and exit codes included). Needs the MNIST assets (``make assets``).
"""

from __future__ import annotations

import csv
import itertools
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_docs import ROOT, Block, is_install, readme_blocks, shell_commands

from cli_runner import invoke
from inhernet.cli import main as inhernet_main
from inhernet_bench.cli import main as bench_main
from inhernet_bench.presets.mnist import MNIST_FILES, mnist_dir, read_idx

pytestmark = pytest.mark.assets

ENTRY_POINTS = {"inhernet": inhernet_main, "inhernet-bench": bench_main}
#: the files and folders the README's commands read; each is made by :func:`workspace`
INPUTS = {"digits/train", "digits/test", "resnet18-digits.pth", "./my-bert", "reviews.csv"}
DIGITS_PER_CLASS = {"train": 12, "test": 4}
WORDS = ["good", "bad", "great", "awful", "film", "movie", "plot", "acting", "the", "was", "is", "boring", "fine"]


def write_digits(root: Path) -> None:
    """Real MNIST test digits as PNG image folders: ``root/digits/{train,test}/<digit>/<index>.png``."""
    from PIL import Image

    images_file, labels_file = MNIST_FILES["test"]
    images, labels = read_idx(mnist_dir() / images_file), read_idx(mnist_dir() / labels_file)
    wanted = {split: dict.fromkeys(range(10), n) for split, n in DIGITS_PER_CLASS.items()}
    for index, label in enumerate(labels.tolist()):
        split = next((s for s in ("train", "test") if wanted[s][label]), None)
        if split is None:
            continue
        wanted[split][label] -= 1
        folder = root / "digits" / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index].numpy()).save(folder / f"{index}.png")
    assert not any(n for counts in wanted.values() for n in counts.values())


def write_text_classifier(root: Path) -> None:
    """``my-bert`` (a tiny random BERT classifier saved with a WordPiece tokenizer) and ``reviews.csv``."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(root / "my-bert")
    BertTokenizerFast(vocab=vocab).save_pretrained(root / "my-bert")
    rng = random.Random(0)
    rows = [(" ".join(rng.choices(WORDS, k=rng.randint(3, 12))), rng.choice(["positive", "negative"]))
            for _ in range(120)]
    with open(root / "reviews.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the README's inputs, and an ``INHERNET_HOME`` that reads the installed MNIST files
    but keeps the cost tables that ``compact`` times out of the user's cache."""
    import torchvision

    root = tmp_path_factory.mktemp("readme")
    write_digits(root)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), root / "resnet18-digits.pth")
    write_text_classifier(root)
    (root / ".home").mkdir()
    (root / ".home" / "mnist").symlink_to(mnist_dir().resolve(), target_is_directory=True)
    return root


def run_python(block: Block, cwd: Path) -> None:
    env = {**os.environ, "INHERNET_HOME": str(cwd / ".home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", block.code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{block.where} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"


def run_shell(block: Block, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in shell_commands(block.code):
        code, out, err = invoke(monkeypatch, capsys, *argv[1:], main=ENTRY_POINTS[argv[0]])
        assert code == 0, f"{block.where}: `{' '.join(argv)}` exited {code}:\n{out[-3000:]}\n{err[-3000:]}"


def named_inputs(blocks: list[Block]) -> set[str]:
    """What the README's commands read: ``--data`` and ``--weights`` values, and local MODEL arguments."""
    names = set()
    for block in blocks:
        for argv in (shell_commands(block.code) if block.language == "bash" else []):
            names |= {value for flag, value in itertools.pairwise(argv) if flag in ("--data", "--weights")}
            if argv[1:2] in (["plan"], ["compress"]) and ":" not in argv[2]:
                names.add(argv[2])
    return names


def test_the_test_prepares_exactly_the_inputs_the_readme_names():
    blocks = [b for b in readme_blocks() if not is_install(b)]
    assert named_inputs(blocks) == INPUTS


def test_every_readme_block_runs_as_written(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("INHERNET_HOME", str(workspace / ".home"))
    ran = []
    for block in readme_blocks():
        if is_install(block):
            continue
        if block.language == "python":
            run_python(block, workspace)
        else:
            run_shell(block, monkeypatch, capsys)
        ran.append(block)
    assert ran == [b for b in readme_blocks() if not is_install(b)]
    # what the README says each command leaves behind
    for saved in ("out/resnet18", "out/bert", "out/mnist-student"):
        assert (workspace / saved / "inhernet.json").is_file(), saved
