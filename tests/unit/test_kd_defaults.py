"""The KD learning rate of a student's family: the table, its resolution in ``distill`` and ``inhernet train``."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_cli_user import assets  # noqa: F401  (the tiny BERT directory and CSV, a module fixture)
from torch.utils.data import DataLoader, TensorDataset

from cli_runner import invoke
from inhernet.distillation import DistillConfig, distill
from inhernet.distillation.defaults import FAMILY_LR, default_lr
from inhernet.families import model_family
from tiny_models import bert_tiny, cnn, gpt2_tiny, mlp


@pytest.mark.parametrize("factory, family", [(cnn, "conv"), (bert_tiny, "encoder"), (gpt2_tiny, "causal-lm"),
                                             (mlp, "other")])
def test_default_lr_is_the_family_entry(factory, family):
    model, _ = factory()
    assert model_family(model) == family
    assert default_lr(model) == (FAMILY_LR[family], family)


def test_a_contrastive_student_is_a_dual_encoder():
    model, _ = bert_tiny()
    assert default_lr(model, loss="contrastive") == (FAMILY_LR["dual-encoder"], "dual-encoder")


def test_every_family_has_a_positive_learning_rate():
    assert set(FAMILY_LR) == {"conv", "encoder", "causal-lm", "dual-encoder", "other"}
    assert all(0 < lr < 1 for lr in FAMILY_LR.values())


def test_lr_none_is_the_default_and_only_none_or_positive_numbers_pass():
    assert DistillConfig().lr is None
    with pytest.raises(ValueError, match="lr must be a positive number, or None"):
        DistillConfig(lr=0)


class _PeakLR(Callback):
    """Records the optimiser's peak learning rate when training starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.lr = trainer.optimizers[0].param_groups[0]["initial_lr"]


@pytest.mark.parametrize("lr", [None, 5e-3])
def test_distill_trains_at_the_family_default_unless_lr_is_given(tmp_path, lr):
    student, batch = cnn()
    teacher = copy.deepcopy(student)
    loader = DataLoader(TensorDataset(batch, torch.zeros(len(batch), dtype=torch.long)), batch_size=2)
    peak = _PeakLR()
    distill(student, teacher, loader, None, DistillConfig(steps=1, lr=lr, val_at_start=False, log_dir=str(tmp_path)),
            callbacks=[peak])
    assert peak.lr == pytest.approx(FAMILY_LR["conv"] if lr is None else lr)


def test_train_says_which_lr_it_uses(tmp_path, assets, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "bert"
    code, _, err = invoke(monkeypatch, capsys, "compress", assets["bert"], "--data", assets["csv"], "--budget", 0.5,
                          "--batch-size", 8, "--out", out)
    assert code == 0, err
    train = ["train", out, "--data", assets["csv"], "--batch-size", 8, "--steps", 1, "--save-to", tmp_path / "t"]
    code, stdout, err = invoke(monkeypatch, capsys, *train, "--log-dir", tmp_path / "a")
    assert code == 0, err
    lines = [line for line in stdout.splitlines() if line.startswith("lr ")]
    mantissa, exponent = f"{FAMILY_LR['encoder']:e}".split("e")
    assert lines == [f"lr {mantissa.rstrip('0').rstrip('.')}e{int(exponent)} (the encoder family's default; "
                     "--lr to change)"]
    code, stdout, err = invoke(monkeypatch, capsys, *train, "--log-dir", tmp_path / "b", "--lr", 2e-3)
    assert code == 0, err
    assert not re.search(r"^lr ", stdout, re.M)  # an explicit --lr needs no word
