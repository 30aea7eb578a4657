"""bench on a tiny synthetic preset: runs in seconds and writes the contract JSON and plot."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from inhernet_bench import BenchConfig, run_bench, write_json, write_plots
from inhernet_bench.presets import registry
from inhernet_bench.presets.registry import Preset
from tiny_models import LayersOnlyCosts

IN, CLASSES = 16, 4


def _mlp(hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(IN, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, CLASSES))


def _data(batch_size: int = 32, **_: object):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(384, IN, generator=g)
    y = (x[:, :CLASSES] * 3).argmax(1)
    train = TensorDataset(x[:256], y[:256])
    test = TensorDataset(x[256:], y[256:])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(test, batch_size=64)


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    model = _mlp()
    train, _ = _data()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def _student(min_params: int) -> nn.Module:
    from inhernet_bench.baselines import width_scaled

    return width_scaled(lambda s: _mlp(max(1, round(64 * s))), min_params)


@pytest.fixture
def tiny_preset(monkeypatch):
    preset = Preset(
        "tiny-mlp", "synthetic 4-class MLP", "accuracy", _teacher, _data,
        lambda n: [x for x, _ in _data(batch_size=64)[0]], _student,
    )
    monkeypatch.setitem(registry.PRESETS, preset.name, preset)
    return preset


CONTRACT_METHOD_KEYS = {"name", "params", "zero_shot", "metric_mean", "metric_std", "seeds", "steps", "sec_per_step", "curve"}


def test_bench_json_follows_the_contract(tiny_preset, tmp_path):
    cfg = BenchConfig(preset="tiny-mlp", budget=0.3, experts=2, seeds=(0, 1), steps=6, batch_size=32,
                      curve_points=3, progress=False)
    result = run_bench(cfg, log=lambda _: None)
    assert result["preset"] == "tiny-mlp" and result["metric"] == "accuracy" and result["higher_is_better"] is True
    assert set(result) >= {"preset", "budget", "metric", "higher_is_better", "teacher", "methods", "device", "torch", "wall_s"}
    assert set(result["teacher"]) >= {"params", "metric", "macs"}
    names = [m["name"] for m in result["methods"]]
    assert names == list(tiny_preset.methods)
    by_name = {m["name"]: m for m in result["methods"]}
    for m in result["methods"]:
        assert set(m) >= CONTRACT_METHOD_KEYS
        assert m["seeds"] == [0, 1] and m["steps"] == 6
        assert 0.0 <= m["metric_mean"] <= 1.0 and m["metric_std"] >= 0.0
        assert m["curve"][0][0] == 0 and m["curve"][-1][0] == 6
        assert m["macs"] > 0 and m["sec_per_step"] > 0
    inhernet_params = by_name["inhernet"]["params"]
    assert inhernet_params <= 0.3 * result["teacher"]["params"]
    # The matched baselines are never smaller than the InherNet they are compared with.
    assert by_name["kd-student"]["params"] >= inhernet_params
    assert by_name["inhernet-random-init"]["params"] == inhernet_params
    # Inheritance is worth something before any training: the inherited model beats random init.
    assert by_name["inhernet"]["zero_shot"] > by_name["inhernet-random-init"]["zero_shot"]

    # Gated methods also report the accuracy after folding the experts into one (deployment).
    assert {"merged_mean"} <= set(by_name["inhernet"]) and "merged_mean" not in by_name["svd-kd"]
    assert 0.0 <= by_name["inhernet"]["merged_mean"] <= 1.0

    path = write_json(result, tmp_path / "out" / "bench.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    png = write_plots(result, tmp_path / "out" / "bench.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_subset_without_inhernet_is_sized_from_the_unlisted_reference(tiny_preset):
    cfg = BenchConfig(preset="tiny-mlp", budget=0.3, experts=1, seeds=(1,), steps=2, batch_size=32,
                      methods=("kd-student",), curve_points=1, progress=False)
    result = run_bench(cfg, log=lambda _: None)
    (student,) = result["methods"]
    assert student["name"] == "kd-student" and student["seeds"] == [1]
    assert 0.25 * result["teacher"]["params"] <= student["params"] <= 0.3 * result["teacher"]["params"]


def _quiet_cfg(**kw):
    base = dict(preset="tiny-mlp", budget=0.3, experts=1, seeds=(0,), steps=4, batch_size=32,
                methods=("inhernet", "svd-kd"), curve_points=2, progress=False)
    return BenchConfig(**{**base, **kw})


def test_parts_are_written_reused_and_assembled(tiny_preset, tmp_path):
    parts = tmp_path / "parts"
    lines: list[str] = []
    # one method-seed at a time, as a long benchmark split across sessions would run
    first = run_bench(_quiet_cfg(methods=("svd-kd",), seeds=(1,), part_dir=parts), log=lines.append)
    assert sorted(p.name for p in parts.iterdir()) == ["svd-kd--seed1.json"]
    run_bench(_quiet_cfg(seeds=(0,), part_dir=parts), log=lines.append)
    assert len(list(parts.iterdir())) == 3
    lines.clear()
    run_bench(_quiet_cfg(seeds=(0, 1), part_dir=parts), log=lines.append)
    assert sum("part found" in line for line in lines) == 3  # only inhernet's seed 1 was missing
    lines.clear()
    whole = run_bench(_quiet_cfg(seeds=(0, 1), part_dir=parts), log=lines.append)
    assert sum("part found" in line for line in lines) == 4  # nothing trained again: assembled from the parts
    by_name = {m["name"]: m for m in whole["methods"]}
    assert by_name["svd-kd"]["seeds"] == [0, 1]
    assert by_name["svd-kd"]["per_seed"][1]["final"] == first["methods"][0]["metric_mean"]
    # a part of another configuration is never mixed in
    with pytest.raises(ValueError, match="steps"):
        run_bench(_quiet_cfg(steps=5, seeds=(0,), part_dir=parts), log=lambda _: None)


def test_an_interrupted_run_continues_from_its_checkpoint(tiny_preset, tmp_path, monkeypatch):
    """A run killed mid-training (a session ending) resumes from its last checkpoint and ends where an
    uninterrupted run ends; its checkpoints go once the part is written."""
    import lightning.pytorch as pl

    import inhernet_bench.runner as runner

    whole = run_bench(_quiet_cfg(methods=("svd-kd",), steps=6), log=lambda _: None)["methods"][0]

    class Killed(RuntimeError):
        pass

    class KillAfterStep4(pl.Callback):
        def on_train_batch_start(self, trainer, *_):
            if trainer.global_step == 4:  # the checkpoint of step 4 is written, step 5 never starts
                raise Killed

    real = runner.distill
    monkeypatch.setattr(
        runner, "distill", lambda *a, callbacks=(), **k: real(*a, **k, callbacks=[*callbacks, KillAfterStep4()])
    )
    cfg = _quiet_cfg(methods=("svd-kd",), steps=6, part_dir=tmp_path, checkpoint_every=2)
    with pytest.raises(Killed):
        run_bench(cfg, log=lambda _: None)
    train_dir = tmp_path / "svd-kd--seed0.train"
    assert (train_dir / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "svd-kd--seed0.json").exists()

    monkeypatch.setattr(runner, "distill", real)
    lines: list[str] = []
    resumed = run_bench(cfg, log=lines.append)["methods"][0]
    assert any("resuming from" in line for line in lines)
    assert resumed["metric_mean"] == whole["metric_mean"] and resumed["curve"] == whole["curve"]
    assert not train_dir.exists() and (tmp_path / "svd-kd--seed0.json").is_file()

    # checkpoints of another configuration are never continued
    foreign = tmp_path / "svd-kd--seed1.train"
    foreign.mkdir()
    (foreign / "fingerprint.json").write_text(json.dumps({"steps": 99}))
    with pytest.raises(ValueError, match=r"svd-kd--seed1\.train holds the checkpoints of a run under another"):
        run_bench(dataclasses.replace(cfg, seeds=(1,)), log=lambda _: None)


@pytest.mark.parametrize(("kw", "message"), [
    ({"checkpoint_every": 2}, "needs part_dir"),
    ({"checkpoint_every": -1, "part_dir": "p"}, "checkpoint_every must be an int >= 0"),
])
def test_checkpoint_every_is_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        _quiet_cfg(**kw)


def test_parts_of_another_teacher_are_refused(tiny_preset, tmp_path, monkeypatch):
    """A teacher fitted again (another machine, a fixed recipe) must not resume the old teacher's parts."""
    from inhernet_bench import teacher_digest

    run_bench(_quiet_cfg(methods=("svd-kd",), part_dir=tmp_path), log=lambda _: None)
    teacher = _teacher()
    part = json.loads((tmp_path / "svd-kd--seed0.json").read_text())
    assert part["fingerprint"]["teacher"] == teacher_digest(teacher) == teacher_digest(_teacher())
    assert run_bench(_quiet_cfg(methods=("svd-kd",)), log=lambda _: None)["teacher"]["digest"] == teacher_digest(teacher)

    def refitted() -> nn.Module:
        model = _teacher()
        with torch.no_grad():
            model[0].bias[0] += 1e-6  # one value off is another teacher
        return model

    assert teacher_digest(refitted()) != teacher_digest(teacher)
    monkeypatch.setitem(registry.PRESETS, tiny_preset.name, dataclasses.replace(tiny_preset, teacher=refitted))
    with pytest.raises(ValueError, match="teacher"):
        run_bench(_quiet_cfg(methods=("svd-kd",), part_dir=tmp_path), log=lambda _: None)


def test_inherit_overrides_reach_every_inhernet_row_under_the_methods_own_options(tiny_preset, tmp_path):
    run_bench(_quiet_cfg(inherit_overrides={"min_rank_ratio": 0.1, "init": "random"}, part_dir=tmp_path),
              log=lambda _: None)
    inhernet = json.loads((tmp_path / "inhernet--seed0.json").read_text())["fingerprint"]
    svd = json.loads((tmp_path / "svd-kd--seed0.json").read_text())["fingerprint"]
    assert inhernet["inherit_overrides"] == {"min_rank_ratio": 0.1, "init": "random"}
    assert inhernet["recipe"]["config"]["min_rank_ratio"] == svd["recipe"]["config"]["min_rank_ratio"] == 0.1
    assert inhernet["recipe"]["config"]["init"] == "random"
    assert svd["recipe"]["config"]["init"] == "svd"  # svd-kd's own option wins
    # parts made without the overrides are another configuration
    with pytest.raises(ValueError, match="inherit_overrides"):
        run_bench(_quiet_cfg(part_dir=tmp_path), log=lambda _: None)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"budget": 0.5}, r"cannot set \['budget'\]"),
    ({"experts": 2}, "experts="),
    ({"drop_block": 0.5}, r"\['drop_block'\] are not InherConfig options"),
])
def test_inherit_overrides_refuse_what_the_bench_sizes_or_does_not_know(overrides, message):
    with pytest.raises(ValueError, match=message):
        _quiet_cfg(inherit_overrides=overrides)


def test_epochs_train_on_the_whole_split(tiny_preset):
    result = run_bench(_quiet_cfg(steps=None, epochs=2, methods=("svd-kd",)), log=lambda _: None)
    assert result["steps"] == 2 * 256 // 32 == result["methods"][0]["steps"] and result["epochs"] == 2
    with pytest.raises(ValueError, match="not both"):
        BenchConfig(steps=3, epochs=1)


def test_tune_lr_picks_the_best_validation_score_and_caches_it(tiny_preset, tmp_path, monkeypatch):
    from inhernet_bench import runner

    seen: list[tuple[int, ...]] = []
    real_tuner = runner._Tuner

    class Spy(real_tuner):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            seen.append((tuple(self.train_set.indices), tuple(self.val.dataset.indices)))

    monkeypatch.setattr(runner, "_Tuner", Spy)
    cfg = _quiet_cfg(tune_lr=True, lr_grid=(1e-4, 1e-3, 1e-1), tune_steps=2, val_examples=40, part_dir=tmp_path,
                     lr_extensions=0)
    result = run_bench(cfg, log=lambda _: None)
    (train_idx, val_idx) = seen[0]
    assert set(train_idx).isdisjoint(val_idx) and max(val_idx) < 256  # a split of the training data
    assert len(val_idx) == 40 and result["tuning"]["steps"] == 2
    for m in result["methods"]:
        scores = m["lr_scores"]
        assert set(scores) == {"0.0001", "0.001", "0.1"}
        assert scores[f"{m['lr']:g}"] == max(scores.values())
    assert (tmp_path / "svd-kd--tune.json").is_file()
    untuned = run_bench(_quiet_cfg(lr=3e-3), log=lambda _: None)
    assert all(m["lr"] == 3e-3 and "lr_scores" not in m for m in untuned["methods"])
    with pytest.raises(ValueError, match="lr_grid"):
        BenchConfig(tune_lr=True, lr_grid=(1e-3, 3e-3))


def test_flattened_and_steps_to_reach():
    from inhernet_bench.summary import flatness, steps_to_reach

    assert flatness([[0, 0.5], [80, 0.900], [90, 0.901], [100, 0.9015]], 100) == {
        "flattened": True, "flat_spread": pytest.approx(0.0015)}
    assert flatness([[0, 0.5], [80, 0.90], [100, 0.91]], 100)["flattened"] is False
    assert flatness([[0, 0.5], [100, 0.91]], 100)["flattened"] is None
    assert flatness([[80, 100.0], [100, 100.1]], 100, higher=False)["flattened"] is True
    assert steps_to_reach([[0, 0.5], [10, 0.8], [20, 0.9]], 0.8) == 10
    assert steps_to_reach([[0, 50.0], [10, 30.0]], 40.0, higher=False) == 10
    assert steps_to_reach([[0, 0.5]], 0.8) is None


def test_bench_matched_in_macs(tiny_preset):
    """--match macs: InherNet meets a MAC budget and every baseline has at least its MACs."""
    cfg = BenchConfig(preset="tiny-mlp", budget=0.3, match="macs", experts=2, seeds=(0,), steps=2, batch_size=32,
                      methods=("inhernet", "kd-student", "svd-kd"), curve_points=1, progress=False)
    result = run_bench(cfg, log=lambda _: None)
    assert result["match"] == "macs"
    by_name = {m["name"]: m for m in result["methods"]}
    assert by_name["inhernet"]["macs"] <= 0.3 * result["teacher"]["macs"] * 1.01
    assert by_name["kd-student"]["macs"] >= by_name["inhernet"]["macs"]
    assert by_name["svd-kd"]["macs"] <= 0.3 * result["teacher"]["macs"] * 1.01


def test_bench_rejects_an_unknown_match():
    with pytest.raises(ValueError, match="match"):
        BenchConfig(match="flops")


def test_prune_kd_in_the_bench_with_taylor_importance(tiny_preset):
    result = run_bench(_quiet_cfg(methods=("inhernet", "prune-kd"), prune_importance="taylor"), log=lambda _: None)
    inhernet, pruned = result["methods"]
    assert inhernet["params"] <= pruned["params"] <= 1.06 * inhernet["params"]
    with pytest.raises(ValueError, match="prune_importance"):
        BenchConfig(prune_importance="l1")


@pytest.mark.filterwarnings("ignore:the plan reaches")
def test_the_hybrid_records_the_share_of_channels_it_pruned(tiny_preset):
    pytest.importorskip("torch_pruning")
    result = run_bench(_quiet_cfg(methods=("inhernet", "inhernet-prune")), log=lambda _: None)
    inhernet, hybrid = result["methods"]
    assert "pruned_share" not in inhernet
    assert 0.0 <= hybrid["pruned_share"] < 1.0 and hybrid["params"] <= 1.02 * 0.3 * result["teacher"]["params"]



@pytest.mark.filterwarnings("ignore:the plan reaches")
def test_the_baselines_can_be_sized_from_the_hybrid(tiny_preset):
    """reference="inhernet-prune": the hybrid, not the plain InherNet, is what prune-kd is matched to (for a
    budget that rank cuts alone cannot reach); the choice is in the JSON and in the parts' fingerprint."""
    pytest.importorskip("torch_pruning")
    cfg = _quiet_cfg(methods=("inhernet-prune", "prune-kd"), reference="inhernet-prune")
    result = run_bench(cfg, log=lambda _: None)
    hybrid, pruned = result["methods"]
    assert result["reference"] == "inhernet-prune" and "pruned_share" in hybrid
    assert hybrid["params"] <= pruned["params"] <= 1.06 * hybrid["params"]
    assert cfg.fingerprint(2)["reference"] == "inhernet-prune" and "reference" not in _quiet_cfg().fingerprint(2)
    with pytest.raises(ValueError, match="reference must be one of the methods"):
        BenchConfig(reference="inhernet-pruned")
    with pytest.raises(ValueError, match=r"reference='kd-student' could not be built: .* must build an InherNet"):
        run_bench(_quiet_cfg(methods=("kd-student",), reference="kd-student"), log=lambda _: None)

class FakeTimer:
    """Deterministic 'measured' seconds, no clock: 1 ns per MAC on the example input, plus 100 ns per dense
    layer, 200 ns per factorised block and 1 us for the rest of a model. The layer prices agree with
    the whole-model times, so the InherNet's plan predicts its compact form's fake latency."""

    def __init__(self):
        self.models_timed = 0

    @staticmethod
    def _rows(shape) -> int:
        return math.prod(shape.input_shape[:-1])

    def dense(self, shape) -> float:
        if shape.kind == "embedding":  # a lookup: no MACs, and no per-layer overhead (not a Linear)
            return 0.0
        return (self._rows(shape) * shape.out_features * shape.in_features + 100) * 1e-9

    def factorised(self, shape, rank: int) -> float:
        if shape.kind == "embedding":  # the lookup is free; the up-projection counts per token
            return (math.prod(shape.input_shape) * rank * shape.out_features + 200) * 1e-9
        return (self._rows(shape) * rank * (shape.out_features + shape.in_features) + 200) * 1e-9

    def latency(self, models, example) -> list[float]:
        from inhernet import InherBlock, count_macs

        self.models_timed += len(models)
        out = []
        for model in models:
            inside = {id(s) for m in model.modules() if isinstance(m, InherBlock) for s in m.modules() if s is not m}
            layers = [m for m in model.modules() if id(m) not in inside]
            overhead = sum(200 if isinstance(m, InherBlock) else 100 for m in layers
                           if isinstance(m, (InherBlock, nn.Linear)))
            out.append((count_macs(model, example) + overhead + 1000) * 1e-9)
        return out


def test_bench_matched_in_latency(tiny_preset, monkeypatch):
    """--match latency: InherNet meets a latency budget (compact form) and every baseline measures at least
    its latency; the JSON reports latency_ms for the teacher and every method. Nothing is really timed."""
    from inhernet.costs import table as cost_module
    from inhernet_bench import bench_table

    def no_clock(*args, **kwargs):
        raise AssertionError("a real timing ran in a test")

    monkeypatch.setattr(cost_module, "time_calls", no_clock)
    timer = FakeTimer()
    cfg = BenchConfig(preset="tiny-mlp", budget=0.5, match="latency", experts=1, seeds=(0, 1), steps=2, batch_size=32,
                      methods=("inhernet", "kd-student", "prune-kd", "svd-kd"), curve_points=1, progress=False,
                      costs=timer,
                      # inherit's check at one row (where this fake's per-layer overhead dominates) is tested on its own
                      inherit_overrides={"latency_rows": None})
    result = run_bench(cfg, log=lambda _: None)
    assert result["match"] == "latency" and timer.models_timed > 0
    teacher_ms = result["teacher"]["latency_ms"]
    by_name = {m["name"]: m["latency_ms"] for m in result["methods"]}
    checks = {m["name"]: m.get("latency_checks") for m in result["methods"]}
    assert any(c.get("kept") for c in checks["inhernet"]) and checks["kd-student"] is None  # inherit's checks, InherNet methods only
    # The fake agrees with itself: the teacher and the compact InherNet are what it says they are.
    example = tiny_preset.calib(0)[0]
    assert teacher_ms == pytest.approx(timer.latency([_teacher()], example)[0] * 1e3)
    assert by_name["inhernet"] <= 0.5 * teacher_ms and by_name["svd-kd"] <= 0.5 * teacher_ms
    assert by_name["inhernet"] >= 0.49 * teacher_ms  # the plan spends its budget and compact keeps its ranks
    # The matched baselines are never faster than the InherNet they are compared with, and not much slower.
    for name in ("kd-student", "prune-kd"):
        assert by_name["inhernet"] <= by_name[name] <= 1.3 * by_name["inhernet"], name
    assert result["latency"]["batch_size"] == 64 and result["latency"]["threads"] >= 1
    assert "latency ms" in str(bench_table(result).columns[3].header)
    with pytest.raises(ValueError, match="fraction in \\(0, 1\\] of the teacher's measured latency"):
        BenchConfig(match="latency", budget=1000)


def test_layerdrop_kd_is_sized_to_the_inhernets_latency():
    from inhernet_bench.baselines import MethodContext, build_student
    from tiny_models import bert_tiny

    teacher, batch = bert_tiny()
    ctx = MethodContext(teacher, 0.6, 1, [batch], match="latency", costs=FakeTimer())
    ctx.reference = build_student("inhernet", ctx)
    student = build_student("layerdrop-kd", ctx)
    assert ctx.unit == "ns of measured latency"
    assert ctx.size(student) >= ctx.target == ctx.size(ctx.reference)
    assert ctx.target <= 0.6 * ctx.size(teacher)


def test_a_latency_match_refuses_costs_that_cannot_time_models():
    from inhernet_bench.baselines import MethodContext

    with pytest.raises(TypeError, match=r"latency\(models, example\)"):
        MethodContext(_mlp(), 0.5, 1, [torch.randn(4, IN)], match="latency", costs=LayersOnlyCosts())
    with pytest.raises(ValueError, match="match must be one of"):
        MethodContext(_mlp(), 0.5, 1, [torch.randn(4, IN)], match="seconds")


def test_full_test_measures_on_the_presets_whole_test_split(tiny_preset, monkeypatch):
    """``full_test`` passes the preset's ``full_test`` options to ``data()``, and only then does the
    fingerprint (and so a part's validity) change."""
    seen: list[dict] = []

    def data(batch_size: int = 32, test_size: int = 64, **_: object):
        seen.append({"test_size": test_size})
        train, test = _data(batch_size)
        return train, DataLoader(torch.utils.data.Subset(test.dataset, range(test_size)), batch_size=64)

    preset = Preset(**{**tiny_preset.__dict__, "data": data, "full_test": {"test_size": 128}})
    monkeypatch.setitem(registry.PRESETS, preset.name, preset)
    run_bench(_quiet_cfg(methods=("inhernet",)), log=lambda _: None)
    run_bench(_quiet_cfg(methods=("inhernet",), full_test=True), log=lambda _: None)
    assert [s["test_size"] for s in seen] == [64, 128]
    assert "full_test" not in BenchConfig().fingerprint(10)
    assert BenchConfig(full_test=True).fingerprint(10)["full_test"] is True


def test_the_kd_recipe_is_the_benchs_unless_distill_overrides_say_otherwise():
    """temperature and alpha are no options of their own: every part's fingerprint names the bench's
    T = 4, alpha = 0.9 (what the committed parts were trained with), or what distill_overrides set."""
    plain = BenchConfig().fingerprint(10)
    assert (plain["temperature"], plain["alpha"]) == (4.0, 0.9)
    hotter = BenchConfig(distill_overrides={"temperature": 2.0, "alpha": 0.5})
    assert (hotter.temperature, hotter.alpha) == (2.0, 0.5)
    assert (hotter.fingerprint(10)["temperature"], hotter.fingerprint(10)["alpha"]) == (2.0, 0.5)
    with pytest.raises(TypeError):
        BenchConfig(temperature=2.0)
