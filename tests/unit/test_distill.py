"""KD fine-tuning engine: losses, config, and ``distill`` on Lightning (tiny MLPs, synthetic data, CPU)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from inhernet.distillation import (
    DistillConfig,
    FeatureCapture,
    WithTeacherLogits,
    distill,
    feature_loss,
    kd_loss,
    match_feature_names,
    precompute_teacher_logits,
)
from inhernet.distillation.config import MOVED
from inhernet.evaluate import evaluate
from inhernet.experimental.distillation import ExperimentalDistillConfig

IN, HID, CLASSES = 12, 24, 4
N_TRAIN, N_VAL, BATCH = 160, 96, 32  # 5 training batches per epoch


class MLP(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(IN, HID), nn.ReLU(), nn.Dropout(dropout), nn.Linear(HID, HID), nn.ReLU()
        )
        self.head = nn.Linear(HID, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def make_problem(seed: int = 0, dropout: float = 0.0, noise: float = 1.0):
    """A random teacher that labels random inputs perfectly, and a perturbed copy as the student."""
    torch.manual_seed(seed)
    teacher = MLP(dropout)
    x = torch.randn(N_TRAIN + N_VAL, IN)
    teacher.eval()
    with torch.no_grad():
        y = teacher(x).argmax(-1)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(noise * p.abs().mean() * torch.randn_like(p))
    return teacher, student, TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), TensorDataset(x[N_TRAIN:], y[N_TRAIN:])


def loaders(train_set, val_set, batch: int = BATCH, shuffle: bool = True):
    return DataLoader(train_set, batch_size=batch, shuffle=shuffle), DataLoader(val_set, batch_size=48)


def cpu_config(tmp_path: Path, **kw) -> DistillConfig:
    """A CPU run's config; with a knob of the experimental config (warm-up...), that config."""
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("log_dir", str(tmp_path))
    return (ExperimentalDistillConfig if MOVED.keys() & kw.keys() else DistillConfig)(**kw)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- losses
def test_kd_loss_classification_matches_hand_computation():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    labels = torch.tensor([1, 4, 0])
    T, alpha = 2.0, 0.7
    p_t = torch.softmax(t / T, dim=-1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, dim=-1))).sum(-1).mean()
    ce = -torch.log_softmax(s, dim=-1)[torch.arange(3), labels].mean()
    expected = (1 - alpha) * ce + alpha * T**2 * kl
    torch.testing.assert_close(kd_loss(s, t, labels, T, alpha), expected)
    # labels=None: pure KD
    torch.testing.assert_close(kd_loss(s, t, None, T, alpha), T**2 * kl)
    # an ignored example is left out of both terms
    masked = torch.tensor([1, -100, 0])
    keep = [0, 2]
    kl2 = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, dim=-1))).sum(-1)[keep].mean()
    ce2 = -torch.log_softmax(s, dim=-1)[keep, masked[keep]].mean()
    torch.testing.assert_close(kd_loss(s, t, masked, T, alpha), (1 - alpha) * ce2 + alpha * T**2 * kl2)


def test_kd_loss_causal_lm_shifts_and_ignores_padding():
    torch.manual_seed(1)
    N, L, V = 2, 4, 6
    s, t = torch.randn(N, L, V), torch.randn(N, L, V)
    labels = torch.tensor([[3, 1, 2, 5], [0, 4, -100, -100]])  # second sequence padded
    T, alpha = 3.0, 0.4
    ce_terms, kl_terms = [], []
    for b in range(N):
        for pos in range(L - 1):  # position pos predicts labels[b, pos + 1]
            target = int(labels[b, pos + 1])
            if target == -100:
                continue
            ce_terms.append(-torch.log_softmax(s[b, pos], -1)[target])
            p_t = torch.softmax(t[b, pos] / T, -1)
            kl_terms.append((p_t * (p_t.log() - torch.log_softmax(s[b, pos] / T, -1))).sum())
    assert len(ce_terms) == 4
    expected = (1 - alpha) * torch.stack(ce_terms).mean() + alpha * T**2 * torch.stack(kl_terms).mean()
    got = kd_loss(s, t, labels, T, alpha)
    torch.testing.assert_close(got, expected)
    # logits at ignored positions (and at the last position, which predicts nothing) do not matter
    s2, t2 = s.clone(), t.clone()
    s2[1, 1:] += 10 * torch.randn(L - 1, V)
    t2[1, 1:] -= 10 * torch.randn(L - 1, V)
    s2[0, -1] += 5
    torch.testing.assert_close(kd_loss(s2, t2, labels, T, alpha), got)
    # gradients reach the student only
    s3 = s.clone().requires_grad_()
    kd_loss(s3, t, labels, T, alpha).backward()
    assert s3.grad is not None and s3.grad[1, 1:].abs().sum() == 0


def test_kd_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 4), None)
    with pytest.raises(ValueError, match="labels"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1, 2]))


def test_feature_loss_zero_for_a_copy_positive_otherwise():
    torch.manual_seed(0)
    teacher = MLP()
    x = torch.randn(8, IN)
    pairs = match_feature_names(teacher, teacher, ["body.*", "head"])
    names = [s for s, _ in pairs]
    assert names == ["body.0", "body.1", "body.2", "body.3", "body.4", "head"] == [t for _, t in pairs]

    def loss_of(student: nn.Module) -> torch.Tensor:
        with FeatureCapture(student, names) as s_cap:
            student(x)
        with FeatureCapture(teacher, names) as t_cap, torch.no_grad():
            teacher(x)
        return feature_loss(s_cap.features, t_cap.features)

    copy_ = copy.deepcopy(teacher)
    assert loss_of(copy_).item() == 0.0
    with torch.no_grad():
        copy_.body[0].weight.add_(0.1)
    assert loss_of(copy_).item() > 0
    # hooks are removed on exit
    assert not any(m._forward_hooks for m in copy_.modules())


def test_cosine_feature_loss_sees_direction_not_scale():
    t = torch.randn(2, 5, 16)
    assert feature_loss({"h": 3 * t}, {"h": t}, "cosine").item() < 1e-6 < feature_loss({"h": 3 * t}, {"h": t}).item()
    assert feature_loss({"h": -t}, {"h": t}, "cosine").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        feature_loss({"h": t}, {"h": t}, "l1")


def test_feature_loss_errors_are_clear():
    teacher, other = MLP(), nn.Sequential(nn.Linear(IN, 7))
    with pytest.raises(ValueError, match="match no module"):
        match_feature_names(teacher, teacher, ["nothing*"])
    with pytest.raises(ValueError, match=r"module '0' outputs \(2, 7\)"):
        feature_loss({"0": torch.zeros(2, 7)}, {"0": torch.zeros(2, HID)})
    assert match_feature_names(other, nn.Sequential(nn.Linear(IN, 7)), ["*"]) == [("0", "0")]


def test_config_validation_names_the_field():
    for kwargs, field in [
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0}, "temperature"),
        ({"precision": "8"}, "precision"),
        ({"accelerator": "npu"}, "accelerator"),
        ({"devices": 0}, "devices"),
        ({"metric": "f1"}, "metric"),
        ({"feature_weight": 1.0}, "feature_weight"),
        ({"feature_loss": "l1"}, "feature_loss"),
        ({"resume": "last"}, "resume"),
        ({"checkpoint_every": -1}, "checkpoint_every"),
    ]:
        with pytest.raises(ValueError, match=field):
            DistillConfig(**kwargs)
    assert DistillConfig(precision=16).precision == "16-mixed"
    assert DistillConfig(steps=100).validation_interval == 10
    assert DistillConfig(steps=100, val_every=0).validation_interval == 100
    for kwargs, field in [
        ({"optimizer": "adam"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"warmup_steps": 10, "steps": 10}, "warmup_steps"),
        ({"step_milestones": (0.5, 1.0)}, "step_milestones"),
        ({"embed_loss": "l1"}, "embed_loss"),
        ({"steps": 0}, "steps"),  # the public fields are checked as in DistillConfig
    ]:
        with pytest.raises(ValueError, match=rf"ExperimentalDistillConfig\.{field}"):
            ExperimentalDistillConfig(**kwargs)


def test_moved_knobs_say_where_they_went_and_keep_their_fixed_values():
    """Every knob that left DistillConfig raises a TypeError naming its new home; DistillConfig reads as the
    experimental config's defaults (the recipe every shipped run uses), and the experimental config keeps
    the fields in their former order."""
    for name, value in [("warmup_steps", 2), ("optimizer", "sgd"), ("embed_loss", "mse"),
                        ("weight_decay", 0.01), ("schedule", "step"), ("momentum", 0.5), ("step_gamma", 0.5),
                        ("step_milestones", (0.5,))]:
        with pytest.raises(TypeError, match=rf"DistillConfig has no '{name}': it moved to "
                                            r"inhernet\.experimental\.distillation\.ExperimentalDistillConfig"):
            DistillConfig(**{name: value})
        assert getattr(DistillConfig(), name) == getattr(ExperimentalDistillConfig(), name)
        assert getattr(ExperimentalDistillConfig(**{name: value}), name) == value
    assert set(MOVED) == {f.name for f in fields(ExperimentalDistillConfig)} - {f.name for f in fields(DistillConfig)}
    assert list(ExperimentalDistillConfig().to_dict())[:4] == ["steps", "lr", "weight_decay", "optimizer"]
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        DistillConfig(bogus=1)


# ---------------------------------------------------------------------------------------------- distill
def test_distill_improves_the_student_and_reports_history(tmp_path):
    teacher, student, train_set, val_set = make_problem(noise=1.0)
    train, val = loaders(train_set, val_set)
    teacher_before = weights(teacher)
    start = evaluate(student, val)["accuracy"]
    cfg = cpu_config(tmp_path, steps=40, lr=3e-3, val_every=10, warmup_steps=4, checkpoint_every=20)
    history = distill(student, teacher, train, val, cfg)

    final = evaluate(student, val)["accuracy"]
    assert final >= start + 0.15, (start, final)
    assert student.training is False  # trained in train mode, handed back in the mode it came in
    assert set(history) >= {"curve", "train_loss", "steps", "sec_per_step", "final"}
    assert history["steps"] == 40
    assert [s for s, _ in history["curve"]] == [0, 10, 20, 30, 40]
    assert history["curve"][0][1] == pytest.approx(start)
    assert history["final"] == {"accuracy": pytest.approx(final)}  # inhernet.evaluate semantics
    assert [s for s, _ in history["train_loss"]] == list(range(1, 41))
    assert history["train_loss"][-1][1] < history["train_loss"][0][1]
    assert history["sec_per_step"] > 0
    # the teacher is untouched and its flags restored; checkpoints leave it out
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters()) and teacher.training is False
    ckpt = torch.load(history["checkpoint"], weights_only=False)
    assert ckpt["state_dict"] and all(k.startswith("student.") for k in ckpt["state_dict"])
    assert (tmp_path / "logs").is_dir() and json.loads((tmp_path / "history.json").read_text())["steps"] == 40


RESUME_STEPS = 12  # 5 batches per epoch: the half-way checkpoint (step 6) is in the middle of epoch 2


def _reference_config(tmp_path: Path, **kw) -> DistillConfig:
    kw = {"steps": RESUME_STEPS, "lr": 3e-3, "val_every": 4, "warmup_steps": 2, "seed": 7, **kw}
    return cpu_config(tmp_path, **kw)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run with dropout and a shuffled loader: the baseline of the next tests."""
    teacher, student, train_set, val_set = make_problem(dropout=0.2)
    initial = copy.deepcopy(student)
    train, val = loaders(train_set, val_set)
    history = distill(student, teacher, train, val, _reference_config(tmp_path_factory.mktemp("ref")))
    return {"teacher": teacher, "initial": initial, "final": weights(student), "history": history,
            "sets": (train_set, val_set)}


def test_same_seed_gives_identical_weights(reference_run, tmp_path):
    student = copy.deepcopy(reference_run["initial"])
    train, val = loaders(*reference_run["sets"])
    distill(student, reference_run["teacher"], train, val, _reference_config(tmp_path))
    for name, value in weights(student).items():
        assert torch.equal(value, reference_run["final"][name]), name


def test_resume_mid_epoch_matches_an_uninterrupted_run(reference_run, tmp_path):
    import lightning as L

    class StopAt(L.Callback):
        def __init__(self, step: int):
            self.step = step

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= self.step:
                trainer.should_stop = True

    half = RESUME_STEPS // 2
    student = copy.deepcopy(reference_run["initial"])
    train, val = loaders(*reference_run["sets"])
    first = distill(student, reference_run["teacher"], train, val,
                    _reference_config(tmp_path, checkpoint_every=half), callbacks=[StopAt(half)])
    assert first["steps"] == half and Path(first["checkpoint"]).name == "last.ckpt"

    # a fresh process would rebuild everything: start from a differently trained student to be sure
    resumed_student = copy.deepcopy(reference_run["initial"])
    train, val = loaders(*reference_run["sets"])
    history = distill(resumed_student, reference_run["teacher"], train, val,
                      _reference_config(tmp_path, checkpoint_every=half, resume="last"))
    for name, value in weights(resumed_student).items():
        torch.testing.assert_close(value, reference_run["final"][name], rtol=1e-6, atol=1e-7, msg=name)
    ref = reference_run["history"]
    assert history["steps"] == RESUME_STEPS
    assert [s for s, _ in history["train_loss"]] == list(range(1, RESUME_STEPS + 1))
    torch.testing.assert_close(torch.tensor(history["train_loss"]), torch.tensor(ref["train_loss"]))
    assert history["final"] == pytest.approx(ref["final"])


def test_precomputed_teacher_logits_match_live_teacher_and_skip_it(tmp_path):
    teacher, student, train_set, val_set = make_problem()
    live = copy.deepcopy(student)
    train, _ = loaders(train_set, val_set, shuffle=True)
    distill(live, teacher, train, None, cpu_config(tmp_path / "a", steps=12))

    cached_set = precompute_teacher_logits(teacher, train_set)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    cached_train, _ = loaders(cached_set, val_set, shuffle=True)
    distill(student, teacher, cached_train, None, cpu_config(tmp_path / "b", steps=12))
    assert calls == []  # the teacher never ran: its logits came with the batches
    for name, value in weights(live).items():
        torch.testing.assert_close(value, student.state_dict()[name])
    with pytest.raises(ValueError, match="teacher logits"):
        WithTeacherLogits(train_set, torch.zeros(3, 2))


def _feature_gap(student: nn.Module, teacher: nn.Module, x: torch.Tensor, names: list[str]) -> float:
    """The feature loss between the two models' outputs at ``names`` on inputs ``x``."""
    with FeatureCapture(student, names) as s_cap, FeatureCapture(teacher, names) as t_cap, torch.no_grad():
        student(x)
        teacher(x)
    return float(feature_loss(s_cap.features, t_cap.features))


def test_feature_weight_changes_the_result_and_pulls_the_features_together(tmp_path):
    """The same run (data, seed, steps) with and without the feature term: the trained weights differ,
    and only the run with the feature term brings the matched block's outputs much closer to the teacher's."""
    teacher, student, train_set, val_set = make_problem(noise=1.0)
    x = train_set.tensors[0]
    names = ["body.4"]
    before = _feature_gap(student, teacher, x, names)
    trained = {}
    for weight in (0.0, 10.0):
        run = copy.deepcopy(student)
        train, val = loaders(train_set, val_set)
        patterns = ("body.4",) if weight else ()
        history = distill(run, teacher, train, val, cpu_config(
            tmp_path / str(weight), steps=30, lr=3e-3, val_every=0, feature_weight=weight, feature_patterns=patterns))
        assert history["steps"] == 30 and [s for s, _ in history["curve"]] == [0, 30]
        trained[weight] = run
    plain, featured = trained[0.0], trained[10.0]
    assert any(not torch.equal(a, b) for a, b in zip(weights(plain).values(), weights(featured).values(), strict=True))
    plain_gap, featured_gap = (_feature_gap(m, teacher, x, names) for m in (plain, featured))
    assert featured_gap < 0.5 * before, (before, featured_gap)  # the feature loss fell
    assert featured_gap < 0.5 * plain_gap, (plain_gap, featured_gap)  # because of the feature term
    with pytest.raises(ValueError, match="match no module"):
        distill(student, teacher, train, val, cpu_config(
            tmp_path / "missing", steps=2, feature_weight=1.0, feature_patterns=("missing",)))


# ---------------------------------------------------------------------------------- Hugging Face style
@dataclass
class Output:
    logits: torch.Tensor


class DictClassifier(nn.Module):
    """Takes ``features=...`` keyword inputs and returns an object with ``.logits``, like HF models."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.mlp = mlp

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Output:
        return Output(self.mlp(features))


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, base: TensorDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.base[i]
        return {"features": x, "attention_mask": torch.ones(1), "labels": y}


def test_hf_style_outputs_and_dict_batches(tmp_path):
    teacher, student, train_set, val_set = make_problem(noise=1.0)
    teacher, student = DictClassifier(teacher), DictClassifier(student)
    train = DataLoader(DictDataset(train_set), batch_size=BATCH, shuffle=True)
    val = DataLoader(DictDataset(val_set), batch_size=48)
    start = evaluate(student, val)["accuracy"]
    history = distill(student, teacher, train, val, cpu_config(tmp_path, steps=30, lr=3e-3, val_every=0))
    assert history["final"]["accuracy"] == pytest.approx(evaluate(student, val)["accuracy"])
    assert history["final"]["accuracy"] > start


def test_hf_causal_lm_perplexity(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                  initializer_range=0.3, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    teacher = transformers.GPT2LMHeadModel(cfg).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(p.abs().mean() * torch.randn_like(p))
    ids = torch.randint(0, 20, (24, 10))
    mask = torch.ones_like(ids)
    mask[::3, 7:] = 0  # padded tails
    labels = ids.masked_fill(mask == 0, -100)
    rows = [{"input_ids": i, "attention_mask": m, "labels": lab} for i, m, lab in zip(ids, mask, labels, strict=True)]
    train = DataLoader(rows[:16], batch_size=4, shuffle=True)
    val = DataLoader(rows[16:], batch_size=4)
    history = distill(student, teacher, train, val, cpu_config(
        tmp_path, steps=8, lr=1e-2, alpha=0.5, temperature=1.0, metric="perplexity", val_every=0))
    ppl = evaluate(student, val, metric="perplexity")["perplexity"]
    assert history["final"]["perplexity"] == pytest.approx(ppl, rel=1e-6)
    assert history["train_loss"][-1][1] < history["train_loss"][0][1]


# -------------------------------------------------------------------------------------- data parallel
DDP_STEPS = 8
DDP_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from test_distill import BATCH, DDP_STEPS, ddp_config, loaders, make_problem
from inhernet.distillation import distill

teacher, student, train_set, val_set = make_problem()
train, val = loaders(train_set, val_set, batch=BATCH // 2, shuffle=False)  # per-process batch
history = distill(student, teacher, train, val, ddp_config({log_dir!r}, devices=2, strategy="ddp"))
if history["is_global_zero"]:
    torch.save(student.state_dict(), {out!r})
    json.dump(history, open({out!r} + ".json", "w"))
"""


def ddp_config(log_dir, **kw) -> DistillConfig:
    return DistillConfig(steps=DDP_STEPS, lr=3e-3, val_every=4, accelerator="cpu", log_dir=str(log_dir), **kw)


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs gloo"
)
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """``strategy="ddp"`` (Lightning relaunches the script for rank 1; gloo on CPU), run as a script
    because the launcher re-executes ``sys.argv``, which cannot be pytest itself."""
    out = tmp_path / "ddp_student.pt"
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT).format(
        tests=str(Path(__file__).parent), log_dir=str(tmp_path / "ddp"), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    teacher, student, train_set, val_set = make_problem()
    train, val = loaders(train_set, val_set, batch=BATCH, shuffle=False)  # the same global batch
    single = distill(student, teacher, train, val, ddp_config(tmp_path / "single"))
    ddp_weights = torch.load(out)
    for name, value in student.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
    ddp_history = json.loads(Path(str(out) + ".json").read_text())
    assert ddp_history["world_size"] == 2 and ddp_history["steps"] == DDP_STEPS
    assert ddp_history["final"]["accuracy"] == pytest.approx(single["final"]["accuracy"])
    torch.testing.assert_close(torch.tensor(ddp_history["train_loss"]), torch.tensor(single["train_loss"]))


def test_module_freezes_the_teacher_and_keeps_it_out_of_checkpoints():
    from inhernet.distillation import DistillModule

    teacher, student, _, _ = make_problem(dropout=0.5)
    module = DistillModule(student, teacher, DistillConfig())
    assert not any(p.requires_grad for p in module.teacher.parameters())
    module.train()
    assert module.student.training and not module.teacher.training
    assert module.configure_optimizers()["optimizer"].param_groups[0]["params"][0] is student.body[0].weight
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {"student." + k for k in student.state_dict()}
    module.on_load_checkpoint(checkpoint)  # the live teacher is put back for strict loading
    module.load_state_dict(checkpoint["state_dict"], strict=True)


def test_gates_train_in_the_two_groups_of_every_parameter():
    """One learning rate for all: a gated student's parameters form two groups, the weights of 2+ dimensions
    (gate weights among them) decayed and the rest not, each at ``lr``."""
    from inhernet import InherBlock, inherit
    from inhernet.distillation import DistillModule
    from inhernet.experimental import ExperimentalConfig

    teacher, _, _, _ = make_problem()
    student = inherit(teacher, ExperimentalConfig(rank=4, experts=3, init="svd"), progress=False)
    gates = [p for m in student.modules() if isinstance(m, InherBlock) for p in m.gate.parameters()]
    assert gates
    cfg = ExperimentalDistillConfig(lr=2e-3, weight_decay=0.01)
    decayed, rest = DistillModule(student, teacher, cfg).configure_optimizers()["optimizer"].param_groups
    assert [(g["lr"], g["weight_decay"]) for g in (decayed, rest)] == [(2e-3, 0.01), (2e-3, 0.0)]
    assert {id(p) for p in decayed["params"]} == {id(p) for p in student.parameters() if p.ndim > 1}
    assert {id(p) for p in rest["params"]} == {id(p) for p in student.parameters() if p.ndim <= 1}
    assert {id(p) for p in gates} <= {id(p) for g in (decayed, rest) for p in g["params"]}


def test_teacher_logits_travel_with_dict_examples():
    """Hugging Face style dict examples gain a ``teacher_logits`` key, matching the teacher's output."""

    class DictSet(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.y[i]}

    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x)

    torch.manual_seed(0)
    model = DictModel()
    data = DictSet(torch.randn(10, 4), torch.randint(0, 3, (10,)))
    cached = precompute_teacher_logits(model, data, batch_size=4)
    example = cached[7]
    assert set(example) == {"x", "labels", "teacher_logits"}
    torch.testing.assert_close(example["teacher_logits"], model(data.x[7:8])[0].detach())
