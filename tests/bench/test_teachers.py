"""The converged-teacher builder (``inhernet_bench.presets.teacher_cache.build_teacher``) on a tiny classifier, and its wiring into the
presets and the ``teacher`` command: patience, best checkpoint, resumable parts, recipe keys, disjoint splits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cli_runner import invoke
from inhernet_bench import teachers
from inhernet_bench.cli import main as bench_main
from inhernet_bench.presets import teacher_cache
from inhernet_bench.presets.teacher_cache import (
    TeacherMissingError,
    TeacherSpec,
    build_teacher,
    classification_loss,
    load_teacher,
    recipe_key,
    stratified_split,
)

RECIPE = {"data": "gaussian blobs", "lr": 0.05, "batch_size": 8, "warmup_steps": 2, "weight_decay": 0.01,
          "eval_every": 2, "patience": 3, "max_steps": 400, "seed": 0}


def _blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, (n,), generator=g)
    return TensorDataset(torch.randn(n, 4, generator=g) + 1.5 * nn.functional.one_hot(labels, 4)[:, :4].float(),
                         labels)


def _spec(**recipe: Any) -> TeacherSpec:
    def model() -> nn.Module:  # dropout: the random state must survive a resume
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))

    def splits(_: nn.Module):
        data = _blobs(96, seed=1)
        fit, val = stratified_split(data.tensors[1], 24, seed=0)
        return (torch.utils.data.Subset(data, fit), DataLoader(torch.utils.data.Subset(data, val), batch_size=64),
                DataLoader(_blobs(48, seed=2), batch_size=32))

    return TeacherSpec("tiny", {**RECIPE, **recipe}, model, splits, classification_loss, "accuracy")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INHERNET_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _quiet(_: str) -> None:
    pass


def test_stops_on_patience_and_caches_a_record() -> None:
    record = build_teacher(_spec(), command="cmd", log=_quiet)
    assert record is not None and record["stopped"] == "patience"
    # no improvement in the last `patience` evaluations, and one would have been allowed more
    assert record["steps"] == record["best_step"] + RECIPE["patience"] * RECIPE["eval_every"] < RECIPE["max_steps"]
    scores = [score for _, score in record["validation_history"]]
    assert record["validation"]["accuracy"] == max(scores) > scores[0]
    assert record["recipe"] == RECIPE and record["command"] == "cmd" and record["test"]["count"] == 48
    assert record["device"] == "cpu" and record["train_examples"] == len(stratified_split(_blobs(96, 1).tensors[1], 24, 0)[0])
    folder = teacher_cache.teacher_cache_dir(_spec().name)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors"]  # state removed
    assert build_teacher(_spec(), log=_quiet) == record  # done: read, not trained again


def test_keeps_the_best_checkpoint_not_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted, seen = iter([0.5, 0.9, 0.7, 0.6, 0.8]), []
    real = teacher_cache.evaluate

    def evaluate(model: nn.Module, loader: Any, metric: str) -> dict[str, float]:
        if loader.batch_size == 32:  # the test split: measured for real
            return real(model, loader, metric)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {metric: next(scripted)}

    monkeypatch.setattr(teacher_cache, "evaluate", evaluate)
    record = build_teacher(_spec(), log=_quiet)
    assert record["best_step"] == 4 and record["steps"] == 10 and len(seen) == 5
    cached = load_teacher(_spec())
    for name, value in cached.state_dict().items():
        assert torch.equal(value, seen[1][name]), name
    assert any(not torch.equal(value, seen[-1][name]) for name, value in cached.state_dict().items())


def test_a_build_in_parts_ends_where_one_uninterrupted_run_does(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = build_teacher(_spec(), log=_quiet)
    reference = load_teacher(_spec()).state_dict()
    monkeypatch.setenv("INHERNET_HOME", str(home.parent / "parts"))
    parts, record = 0, None
    while record is None:
        record = build_teacher(_spec(), stop_after=3, log=_quiet)
        parts += 1
        assert parts < 100
    assert parts > 2
    for key in ("steps", "best_step", "validation", "validation_history", "test", "recipe"):
        assert record[key] == whole[key], key
    for name, value in load_teacher(_spec()).state_dict().items():
        assert torch.equal(value, reference[name]), name
    # a time limit ends a part after its first step at the latest, and the next part goes on from there
    monkeypatch.setenv("INHERNET_HOME", str(home.parent / "timed"))
    assert build_teacher(_spec(), max_minutes=1e-9, log=_quiet) is None
    progress = json.loads((teacher_cache.teacher_cache_dir(_spec().name) / "state" / "progress.json").read_text())
    assert progress["step"] == 1


def test_the_cache_key_follows_the_recipe() -> None:
    assert recipe_key(RECIPE) == recipe_key(dict(reversed(RECIPE.items())))
    keys = {recipe_key({**RECIPE, k: v}) for k, v in [("lr", 0.01), ("patience", 4), ("seed", 1), ("data", "x")]}
    assert len(keys | {recipe_key(RECIPE)}) == 5
    build_teacher(_spec(), log=_quiet)
    with pytest.raises(TeacherMissingError, match=r"inhernet-bench teacher --preset tiny"):
        load_teacher(_spec(lr=0.01))
    with pytest.raises(ValueError, match=r"must state \['patience'\]"):
        TeacherSpec("tiny", {k: v for k, v in RECIPE.items() if k != "patience"}, nn.Linear, None, None, "accuracy")


def test_a_stratified_validation_split_is_disjoint_and_keeps_class_shares() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)[torch.randperm(100, generator=torch.Generator().manual_seed(3))]
    train, val = stratified_split(labels, 20, seed=0)
    assert not set(train) & set(val) and sorted(train + val) == list(range(100))
    assert torch.bincount(labels[val]).tolist() == [12, 6, 2]
    assert stratified_split(labels, 20, seed=0) == (train, val) != stratified_split(labels, 20, seed=1)
    with pytest.raises(ValueError, match="n_val"):
        stratified_split(labels, 100, seed=0)


def test_the_command_builds_in_parts_and_writes_the_record(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(teachers, "teacher_spec", lambda preset: _spec())
    code, out, _ = invoke(monkeypatch, capsys, "teacher", "--preset", "tiny", "--record-dir", tmp_path / "rec",
                          "--max-minutes", "1e-9", main=bench_main)
    assert code == 0 and "rerun" in out and not (tmp_path / "rec").exists()
    for _ in range(200):
        code, out, _ = invoke(monkeypatch, capsys, "teacher", "--preset", "tiny", "--record-dir", tmp_path / "rec",
                              main=bench_main)
        if "done" in out:
            break
    record = json.loads((tmp_path / "rec" / "tiny.json").read_text())
    assert code == 0 and record["command"] == "inhernet-bench teacher --preset tiny" and record["steps"] >= 2
    monkeypatch.undo()
    code, _, err = invoke(monkeypatch, capsys, "teacher", "--preset", "mnist-cnn", main=bench_main)
    assert code != 0 and "fashion-effnet" in err


def test_a_teacher_trains_with_fixed_threads_whatever_the_callers() -> None:
    """A CPU's float sums depend on the thread count: training runs with FIT_THREADS, the caller's count kept."""
    seen: list[int] = []

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return classification_loss(model, batch)

    spec = _spec(max_steps=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        build_teacher(TeacherSpec(spec.preset, spec.recipe, spec.model, spec.splits, loss, spec.metric), log=_quiet)
        assert seen == [teacher_cache.FIT_THREADS] * 2 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.assets
def test_a_bench_on_a_preset_without_its_teacher_names_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("INHERNET_HOME", str(tmp_path))  # a machine where the teacher was never built
    code, _, err = invoke(monkeypatch, capsys, "plan", "--preset", "tweets-minilm", main=bench_main)
    assert code != 0 and "inhernet-bench teacher --preset tweets-minilm" in " ".join(err.split())
