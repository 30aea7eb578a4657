"""Issue 27's fair tuning and convergence in the bench runner: tuning runs of a quarter of the schedule, a
grid that extends past an edge until the best lr is inside it, runs judged at constant lr on validation, and
the test split read once per final row."""

from __future__ import annotations

import math

import pytest
from test_bench import _data, _student, _teacher
from torch.utils.data import DataLoader

from inhernet_bench import BenchConfig, run_bench, runner
from inhernet_bench.presets import registry
from inhernet_bench.presets.registry import Preset


@pytest.fixture
def tiny_preset(monkeypatch):
    preset = Preset("tiny-mlp", "synthetic 4-class MLP", "accuracy", _teacher, _data,
                    lambda n: [x for x, _ in _data(batch_size=64)[0]], _student)
    monkeypatch.setitem(registry.PRESETS, preset.name, preset)
    return preset


def _cfg(**kw):
    base = dict(preset="tiny-mlp", budget=0.3, experts=1, seeds=(0,), steps=4, batch_size=32,
                methods=("svd-kd",), curve_points=2, progress=False)
    return BenchConfig(**{**base, **kw})


@pytest.fixture
def final_runs(monkeypatch) -> list[dict]:
    """What each final (method, seed) run of the bench returns, in order."""
    runs: list[dict] = []
    real = runner._Bench.distil_and_score

    def spy(self, *args, **kw):
        runs.append(real(self, *args, **kw))
        return runs[-1]

    monkeypatch.setattr(runner._Bench, "distil_and_score", spy)
    return runs


@pytest.mark.parametrize("steps", [4, 40, 100, 10_000])
def test_tuning_runs_are_at_least_a_quarter_of_the_schedule_by_default(steps):
    tuning = BenchConfig(tune_lr=True).tuning_steps(steps)
    assert min(steps, 10) <= tuning <= steps and tuning >= math.ceil(0.25 * steps)
    assert BenchConfig(tune_lr=True, tune_steps=3).tuning_steps(steps) == 3


def _fake_scores(monkeypatch, best_lr: float) -> list[float]:
    """Score every tuning run by its lr's distance (in log) from ``best_lr``; returns the lrs tried."""
    tried: list[float] = []

    def score(self, name, student, lr):
        tried.append(lr)
        return -abs(math.log(lr / best_lr))

    monkeypatch.setattr(runner._Tuner, "score", score)
    return tried


def test_the_grid_extends_past_an_edge_until_the_best_lr_is_inside(tiny_preset, monkeypatch):
    tried = _fake_scores(monkeypatch, best_lr=1e-5)
    result = run_bench(_cfg(tune_lr=True, lr_grid=(1e-3, 3e-3, 1e-2), val_examples=40), log=lambda _: None)
    (row,) = result["methods"]
    grid = result["tuning"]["methods"]["svd-kd"]["lr_grid"]
    assert result["tuning"]["methods"]["svd-kd"]["interior"] is False  # three extensions cannot reach 1e-5
    assert len(grid) == 3 + 3 and grid[0] < 1e-3 and len(tried) == len(set(tried)) == 6
    assert row["lr"] == min(grid) and list(row["lr_scores"]) == [f"{lr:g}" for lr in grid]

    tried.clear()
    _fake_scores(monkeypatch, best_lr=1.1e-4)
    result = run_bench(_cfg(tune_lr=True, lr_grid=(1e-3, 3e-3, 1e-2), val_examples=40), log=lambda _: None)
    tuning = result["tuning"]["methods"]["svd-kd"]
    grid = tuning["lr_grid"]
    assert tuning["interior"] is True and grid[0] < result["methods"][0]["lr"] < grid[-1]
    assert len(grid) == 6  # 3.33e-4, 1.11e-4 (its best), then 3.7e-5 shows 1.11e-4 is interior
    assert result["methods"][0]["lr"] == pytest.approx(1.1e-4, rel=0.01)


def test_an_upper_edge_extends_upward_and_a_fixed_grid_stays(tiny_preset, monkeypatch):
    _fake_scores(monkeypatch, best_lr=1.0)
    result = run_bench(_cfg(tune_lr=True, lr_grid=(1e-3, 1e-2, 1e-1), val_examples=40), log=lambda _: None)
    assert result["tuning"]["methods"]["svd-kd"]["lr_grid"][-2:] == [1.0, 10.0]  # 10 shows 1 is interior
    assert result["methods"][0]["lr"] == 1.0
    assert result["tuning"]["methods"]["svd-kd"]["interior"] is True
    result = run_bench(_cfg(tune_lr=True, lr_grid=(1e-3, 1e-2, 1e-1), val_examples=40, lr_extensions=0),
                       log=lambda _: None)
    assert result["tuning"]["methods"]["svd-kd"]["lr_grid"] == [1e-3, 1e-2, 1e-1]
    assert result["tuning"]["methods"]["svd-kd"]["interior"] is False


def test_the_default_tuning_runs_a_quarter_of_the_steps_on_a_real_model(tiny_preset):
    result = run_bench(_cfg(tune_lr=True, steps=40, val_examples=40, lr_extensions=0), log=lambda _: None)
    assert result["tuning"]["steps"] >= 10 and result["tuning"]["share"] >= 0.25


class _Counting:
    """A loader that counts the batches read from it (``iter()`` alone reads nothing: tqdm calls it twice)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.batch_size, self.batches = loader, loader.batch_size, 0

    def __iter__(self):
        for batch in self.loader:
            self.batches += 1
            yield batch

    @property
    def passes(self) -> float:
        return self.batches / len(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def test_at_constant_lr_each_run_keeps_its_best_validation_point_and_reads_the_test_split_once(
    tiny_preset, monkeypatch, final_runs
):
    runs = final_runs
    tests: list[_Counting] = []

    def data(batch_size: int = 32, **_: object):
        train, test = _data(batch_size)
        tests.append(_Counting(test))
        return train, tests[-1]

    monkeypatch.setitem(registry.PRESETS, "tiny-mlp", Preset(
        "tiny-mlp", "synthetic", "accuracy", _teacher, data, tiny_preset.calib, _student))
    cfg = _cfg(steps=8, seeds=(0, 1), methods=("svd-kd", "kd-student"), curve_split="validation",
               val_examples=40, schedule="constant", curve_points=4)
    result = run_bench(cfg, log=lambda _: None)
    # the teacher's row, then one final score per (method, seed): nothing else reads the test split
    assert tests[0].passes == 1 + 2 * 2
    assert result["schedule"]["lr"] == "constant" and result["schedule"]["patience"] is None
    assert len(runs) == 4
    for run in runs:
        step, value = run["best"]
        assert value == max(v for _, v in run["curve"]) and [step, value] in run["curve"]
    assert [p for row in result["methods"] for p in row["best_points"]] == [runs[i]["best"] for i in (0, 2, 1, 3)]


def test_early_stopping_ends_a_flat_run_and_is_recorded(tiny_preset, final_runs):
    runs = final_runs
    # lr 0: validation never improves, so the run stops after `patience` checks past its first
    cfg = _cfg(steps=40, curve_split="validation", val_examples=40, schedule="constant", patience=1,
               curve_points=20, lr=1e-12)
    result = run_bench(cfg, log=lambda _: None)
    assert runs[0]["steps"] < 40 and result["schedule"]["patience"] == 1
    assert runs[0]["best"][1] == max(v for _, v in runs[0]["curve"])


@pytest.mark.parametrize(("kw", "message"), [
    (dict(schedule="constant"), "curve_split"),
    (dict(schedule="linear", curve_split="validation"), "schedule"),
    (dict(patience=3), "patience"),
    (dict(patience=0, schedule="constant", curve_split="validation"), "patience"),
    (dict(lr_extensions=-1), "lr_extensions"),
])
def test_the_schedule_options_are_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kw)


def test_a_presets_own_validation_split_is_tuned_on_and_never_trained_on(tiny_preset, monkeypatch):
    held = list(range(3, 256, 5))  # scattered, as a stratified split is
    monkeypatch.setitem(registry.PRESETS, "tiny-mlp", Preset(
        "tiny-mlp", "synthetic", "accuracy", _teacher, _data, tiny_preset.calib, _student, validation=lambda: held))
    seen: dict[str, list[int]] = {}
    real = runner._Tuner

    class Spy(real):
        def __init__(self, bench):
            super().__init__(bench)
            seen["val"], seen["fit"] = list(self.val.dataset.indices), list(bench.fit)
            seen["tune"] = [bench.fit[i] for i in self.train_set.indices]

    monkeypatch.setattr(runner, "_Tuner", Spy)
    _fake_scores(monkeypatch, best_lr=1e-3)
    result = run_bench(_cfg(tune_lr=True, steps=4, val_examples=40), log=lambda _: None)
    assert seen["val"] == held[:40] and set(seen["fit"]).isdisjoint(held[:40]) and len(seen["fit"]) == 256 - 40
    assert set(seen["tune"]) <= set(seen["fit"]) and "preset's own" in result["tuning"]["split"]
    with pytest.raises(ValueError, match="validation"):
        monkeypatch.setitem(registry.PRESETS, "tiny-mlp", Preset(
            "tiny-mlp", "synthetic", "accuracy", _teacher, _data, tiny_preset.calib, _student,
            validation=lambda: [0, 999]))
        run_bench(_cfg(tune_lr=True), log=lambda _: None)
