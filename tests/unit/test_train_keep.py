"""``distill``: the best weights kept, checkpoints that cost what they need, Ctrl-C and reruns, progress lines."""

from __future__ import annotations

import copy
import os
import signal
import sys

import lightning as L
import pytest
import torch
from test_distill import cpu_config, loaders, make_problem, weights

from inhernet.distillation import distill
from inhernet.distillation.train import Interrupted
from inhernet.evaluate import evaluate

STEPS = 12


class SigintAt(L.Callback):
    """Send this process a SIGINT, as Ctrl-C does, at the start of a step."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *_):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_keep_best_never_returns_a_worse_student_than_it_was_given(tmp_path):
    teacher, student, train_set, val_set = make_problem(noise=0.3)
    train, val = loaders(train_set, val_set)
    given = weights(student)
    start = evaluate(student, val)["accuracy"]
    ruined = copy.deepcopy(student)
    last = distill(ruined, teacher, train, val, cpu_config(tmp_path / "last", steps=6, lr=5.0, val_every=2))
    assert last["best"] is None and evaluate(ruined, val)["accuracy"] < start  # a learning rate that ruins it

    history = distill(student, teacher, train, val, cpu_config(tmp_path / "best", steps=6, lr=5.0, val_every=2,
                                                             keep="best"))
    assert history["curve"][0] == [0, pytest.approx(start)]
    assert history["best"] == [0, pytest.approx(start)]  # every trained point was worse: the given student
    assert history["final"] == {"accuracy": pytest.approx(start)}
    assert all(torch.equal(v, given[k]) for k, v in weights(student).items())


def test_keep_best_takes_the_best_validation_point(tmp_path):
    teacher, student, train_set, val_set = make_problem(noise=1.0)
    train, val = loaders(train_set, val_set)
    history = distill(student, teacher, train, val, cpu_config(tmp_path, steps=STEPS, lr=3e-3, val_every=3,
                                                             keep="best"))
    best_step, best = history["best"]
    assert best == max(v for _, v in history["curve"]) and best_step > 0
    assert evaluate(student, val)["accuracy"] == pytest.approx(best)
    with pytest.raises(ValueError, match="keep='best' needs a val_loader"):
        distill(student, teacher, train, None, cpu_config(tmp_path / "b", steps=2, keep="best"))


def test_only_the_last_checkpoint_is_kept_and_it_leaves_out_the_teacher(tmp_path):
    teacher, student, train_set, val_set = make_problem()
    train, val = loaders(train_set, val_set)
    history = distill(student, teacher, train, val, cpu_config(tmp_path / "a", steps=STEPS, checkpoint_every=2,
                                                             keep="best"))
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["last.ckpt"]
    saved = torch.load(history["checkpoint"], weights_only=False)
    assert all(k.startswith("student.") for k in saved["state_dict"])
    # the best weights so far travel for a resume (saved at the end of step 12, before its validation)
    assert set(saved["inhernet"]["best"]["state"]) == set(student.state_dict())
    distill(copy.deepcopy(student), teacher, train, val, cpu_config(tmp_path / "b", steps=STEPS, checkpoint_every=2,
                                                                     keep_checkpoints=2))
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == [
        "last.ckpt", "step000010.ckpt", "step000012.ckpt"
    ]


def test_a_rerun_over_checkpoints_must_resume(tmp_path):
    teacher, student, train_set, val_set = make_problem()
    train, val = loaders(train_set, val_set)
    distill(copy.deepcopy(student), teacher, train, val, cpu_config(tmp_path, steps=4, checkpoint_every=2))
    with pytest.raises(ValueError, match=r"holds the checkpoints of an earlier run.*resume='last'"):
        distill(copy.deepcopy(student), teacher, train, val, cpu_config(tmp_path, steps=4, checkpoint_every=2))
    distill(copy.deepcopy(student), teacher, train, val, cpu_config(tmp_path, steps=6, checkpoint_every=2,
                                                                    resume="last"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt


def test_ctrl_c_checkpoints_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path):
    teacher, student, train_set, val_set = make_problem(dropout=0.2)
    train, val = loaders(train_set, val_set)
    config = {"steps": STEPS, "lr": 3e-3, "val_every": 4, "keep": "best", "seed": 3}
    whole = copy.deepcopy(student)
    reference = distill(whole, teacher, train, val, cpu_config(tmp_path / "whole", **config))

    cut = copy.deepcopy(student)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as stop:
        distill(cut, teacher, train, val, cpu_config(tmp_path / "cut", **config), callbacks=[SigintAt(5)])
    assert stop.value.step == 6 and stop.value.checkpoint == str(tmp_path / "cut" / "checkpoints" / "last.ckpt")
    assert isinstance(stop.value, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is previous
    resumed = copy.deepcopy(student)
    history = distill(resumed, teacher, train, val, cpu_config(tmp_path / "cut", resume="last", **config))
    assert history["best"] == reference["best"] and history["curve"] == reference["curve"]
    assert all(torch.equal(v, weights(whole)[k]) for k, v in weights(resumed).items())


def test_progress_off_a_terminal_is_a_line_every_tenth_of_the_run(tmp_path, capsys):
    teacher, student, train_set, val_set = make_problem()
    train, val = loaders(train_set, val_set)
    distill(student, teacher, train, val, cpu_config(tmp_path, steps=20, val_every=10, progress=True))
    lines = capsys.readouterr().err.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(",")[0] for line in steps] == [f"step {s}/20" for s in range(2, 21, 2)]
    assert "accuracy" in steps[-1] and "s/step" in steps[-1] and "left" in steps[-1]
    assert not any("GPU available" in line or "Tip" in line for line in lines)  # quiet unless INHERNET_VERBOSE


def test_progress_on_a_terminal_is_one_bar_over_the_steps(tmp_path, capsys, monkeypatch):
    teacher, student, train_set, val_set = make_problem()
    train, val = loaders(train_set, val_set)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    distill(student, teacher, train, val, cpu_config(tmp_path, steps=12, val_every=6, progress=True))
    out, err = capsys.readouterr()
    assert "train: 100%" in out and "12/12" in out  # across the loader's 3 epochs
    assert "Epoch" not in out and "step 12/12," not in err
