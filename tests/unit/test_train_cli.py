"""``inhernet train`` on a tiny text classifier: the best model kept, Ctrl-C and reruns, checkpoints, output."""

from __future__ import annotations

import csv
import os
import signal
import sys

import pytest
import torch
from test_cli_user import assets  # noqa: F401  (the fixture)

import inhernet
from cli_runner import invoke
from inhernet.distillation.callbacks import CheckpointOnInterrupt
from inhernet.sources import build_model, make_loader, open_source, read_source, split


@pytest.fixture(scope="module")
def compressed(assets, tmp_path_factory) -> dict:  # noqa: F811
    """A compressed BERT classifier, and data labelled so that training can only make it worse: the
    validation split carries its own predictions, the training split their opposite."""
    root = tmp_path_factory.mktemp("compressed")
    code = _compress(assets, root / "bert")
    assert code == 0
    source = read_source(root / "bert")
    dataset = open_source(source, assets["csv"]).data.dataset
    student = inhernet.load(root / "bert", base=build_model(source.model)).eval()
    with torch.no_grad():
        predicted = torch.cat([student(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1)
                               for b in make_loader(dataset, 8)]).tolist()
    val = set(split(dataset, 0.25, 0)[1].indices)
    with open(assets["csv"], newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    labels = [source.classes[p if i in val else 1 - p] for i, p in enumerate(predicted)]
    with open(root / "misleading.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *zip(texts, labels, strict=True)])
    return {"dir": root / "bert", "misleading": root / "misleading.csv", "csv": assets["csv"]}


def _compress(assets, out) -> int:  # noqa: F811
    """``inhernet compress`` in a module-scoped fixture (no ``monkeypatch`` there): its exit status."""
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["inhernet", "compress", str(assets["bert"]), "--data", str(assets["csv"]),
                             "--budget", "0.5", "--batch-size", "8", "--out", str(out)])
    try:
        inhernet.cli.main()
        return 0
    except SystemExit as exit_:
        return exit_.code
    finally:
        mp.undo()


def _copy(directory, tmp_path):
    import shutil

    shutil.copytree(directory, tmp_path / "bert")
    return tmp_path / "bert"


def _weights(directory) -> dict[str, bytes]:
    from safetensors.torch import load_file

    return {k: v.numpy().tobytes() for k, v in load_file(inhernet.serialization.weights_path(directory)).items()}


MISLEAD = ["--val-fraction", 0.25, "--alpha", 0, "--lr", 1e-2, "--steps", 10, "--val-every", 5, "--batch-size", 8]


def test_training_that_makes_it_worse_keeps_the_input_model(compressed, tmp_path, monkeypatch, capsys):
    out = _copy(compressed["dir"], tmp_path)
    given = _weights(out)
    code, stdout, err = invoke(monkeypatch, capsys, "train", out, "--data", compressed["misleading"], *MISLEAD)
    assert code == 0, err
    line = [s for s in stdout.splitlines() if "worse" in s]
    assert len(line) == 1 and line[0].startswith("training made validation accuracy worse (1.0000 before, at best 0.")
    assert line[0].endswith(f"after); kept the input model in {out}")
    assert _weights(out) == given and "saved to" not in stdout
    assert f"logs and checkpoints in {out}-train (" in stdout  # the default log dir, beside DIRECTORY, its size

    code, stdout, err = invoke(monkeypatch, capsys, "train", out, "--data", compressed["misleading"], *MISLEAD,
                               "--save-last", "--restart")
    assert code == 0, err
    assert "(the last)" in stdout and f"saved to {out}" in stdout and _weights(out) != given


def test_ctrl_c_saves_a_checkpoint_and_a_rerun_resumes_or_refuses(compressed, tmp_path, monkeypatch, capsys):
    out = _copy(compressed["dir"], tmp_path)
    train = ["train", out, "--data", compressed["csv"], "--steps", 6, "--batch-size", 4, "--val-fraction", 0.25,
             "--save-to"]
    code, _, err = invoke(monkeypatch, capsys, *train, tmp_path / "whole", "--log-dir", tmp_path / "whole-log")
    assert code == 0, err

    def ctrl_c_at_step_2(self, trainer, *_):
        if trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(CheckpointOnInterrupt, "on_train_batch_start", ctrl_c_at_step_2, raising=False)
        code, _, err = invoke(monkeypatch, capsys, *train, tmp_path / "cut")
    assert code == 130
    command = f"inhernet train {out} --data {compressed['csv']} --steps 6 --batch-size 4 --val-fraction 0.25 " \
              f"--save-to {tmp_path / 'cut'} --resume last"
    assert err.splitlines()[-1] == f"interrupted at step 3; `{command}` continues"
    assert not (tmp_path / "cut").exists() and (tmp_path / "bert-train" / "checkpoints" / "last.ckpt").is_file()

    code, _, err = invoke(monkeypatch, capsys, *train, tmp_path / "cut")
    assert code == 2
    assert err == f"error: {out}-train holds the checkpoints of an earlier run: add --resume last to continue it, " \
                  "or --restart to start over\n"
    code, _, err = invoke(monkeypatch, capsys, *train, tmp_path / "cut", "--resume", "last")
    assert code == 0, err
    assert _weights(tmp_path / "cut") == _weights(tmp_path / "whole")  # as if never interrupted
    assert [p.name for p in (tmp_path / "bert-train" / "checkpoints").iterdir()] == ["last.ckpt"]

    code, _, err = invoke(monkeypatch, capsys, *train, tmp_path / "again", "--restart")
    assert code == 0, err
    assert _weights(tmp_path / "again") == _weights(tmp_path / "whole")  # started over
    code, _, err = invoke(monkeypatch, capsys, *train, tmp_path / "again", "--restart", "--resume", "last")
    assert code == 2 and "give one" in err


def test_train_is_quiet_but_for_progress_lines_unless_verbose(compressed, tmp_path, monkeypatch, capsys):
    out = _copy(compressed["dir"], tmp_path)
    monkeypatch.setenv("INHERNET_VERBOSE", "0")  # restored after the test: --verbose sets it
    args = ["train", out, "--data", compressed["csv"], "--steps", 4, "--batch-size", 8, "--checkpoint-every", 0]
    code, stdout, err = invoke(monkeypatch, capsys, *args)
    assert code == 0, err
    assert [line.split(",")[0] for line in err.splitlines()] == [f"step {s}/4" for s in range(1, 5)]
    assert "Loading weights" not in stdout + err and "Tip" not in stdout + err and "/-" not in err
    code, stdout, err = invoke(monkeypatch, capsys, *args, "--restart", "--no-progress")
    assert code == 0, err
    assert err == ""
    code, stdout, err = invoke(monkeypatch, capsys, "--verbose", *args, "--restart", "--no-progress")
    assert code == 0, err
    assert "Loading weights" in err and os.environ["INHERNET_VERBOSE"] == "1"
