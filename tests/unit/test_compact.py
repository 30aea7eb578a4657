"""compact(): experts folded, blocks back to dense where the (injected) cost table says so, ranks rounded."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

from inhernet import InherBlock, InherConfig, InherLinear, compact, inherit, load, save
from inhernet.costs import CostTable, LayerShape
from inhernet.costs.table import rank_points
from inhernet.deploy import export_onnx, merge_experts, verify_onnx
from inhernet.deploy.compact import reranked
from inhernet.experimental import ExperimentalConfig
from tiny_models import bert_tiny, cnn, gpt2_tiny, mlp, rel_err, run, three_linear, two_towers


class FakeCosts:
    """Seconds by layer shape ``(out, in)``: ``slow`` shapes run slower factorised than dense."""

    def __init__(self, slow: set[tuple[int, int]] = frozenset(), everything_slow: bool = False) -> None:
        self.slow, self.everything_slow = slow, everything_slow
        self.asked: list[tuple[LayerShape, int]] = []

    def _slow(self, shape: LayerShape) -> bool:
        return self.everything_slow or (shape.out_features, shape.in_features) in self.slow

    def dense(self, shape: LayerShape) -> float:
        return 1e-3

    def factorised(self, shape: LayerShape, rank: int) -> float:
        self.asked.append((shape, rank))
        return (2e-3 if self._slow(shape) else 5e-4) + rank * 1e-6


class NoCosts:
    """A table that must not be consulted."""

    def dense(self, shape: LayerShape) -> float:
        raise AssertionError(f"measured {shape} although no block needed a measurement")

    def factorised(self, shape: LayerShape, rank: int) -> float:
        raise AssertionError(f"measured {shape} although no block needed a measurement")


def blocks(model: nn.Module) -> dict[str, InherBlock]:
    return {n: m for n, m in model.named_modules() if isinstance(m, InherBlock)}


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trained_gates(student: nn.Module) -> nn.Module:
    """Give every gate an input-dependent weight, as training would."""
    with torch.no_grad():
        for b in blocks(student).values():
            b.gate.weight.normal_(0, 0.5)
    return student


def test_experts_folded_as_merge_experts_does() -> None:
    teacher, x = three_linear()
    student = trained_gates(inherit(teacher, ExperimentalConfig(rank=8, experts=3, expert_noise=0.1, init="svd"), progress=False))
    merged = merge_experts(copy.deepcopy(student), calib=[x])
    with pytest.warns(UserWarning, match="changed the model's outputs"):  # the mean gate replaced each gate
        out = compact(student, [x], rank_multiple=1, costs=FakeCosts())
    assert all(b.experts == 3 for b in blocks(student).values()), "compact must not modify its input by default"
    assert set(blocks(out)) == set(blocks(student)) and len(blocks(out)) >= 2
    assert all(b.experts == 1 and b.gate is None for b in blocks(out).values())
    assert rel_err(run(out, x), run(merged, x)) < 1e-6
    assert out.inhernet_plan.config.experts == 1
    with pytest.raises(ValueError, match="calib"):  # an input-dependent gate needs its mean measured
        compact(student, example=x, costs=FakeCosts())


def test_decisions_follow_the_cost_table() -> None:
    teacher, x = three_linear()
    student = inherit(teacher, ExperimentalConfig(rank=8, experts=1, init="svd"), progress=False)
    costs = FakeCosts(slow={(48, 64)})  # fc2 is slower factorised than dense; fc1, fc3 are faster
    out = compact(student, example=x, budget=1.0, rank_multiple=1, costs=costs)
    assert type(out.fc2) is nn.Linear and isinstance(out.fc1, InherLinear) and isinstance(out.fc3, InherLinear)
    # Dense W = B A, bias kept: the function does not change.
    assert rel_err(run(out, x), run(student, x)) < 1e-6
    rows = {r.name: r for r in out.inhernet_plan.layers}
    assert rows["fc2"].rank is None and rows["fc2"].reason.startswith("returned to dense")
    assert rows["fc2"].params_after == 64 * 48 + 48
    assert rows["fc1"].rank == 8 and rows["fc1"].experts == 1
    assert out.inhernet_plan.total_params == params(out)
    assert out.inhernet_compact["layers"]["fc2"]["dense"] is True
    assert out.inhernet_compact["layers"]["fc1"]["dense"] is False
    # The table was asked about each block at its input shape, once the experts were folded.
    assert {(s.out_features, s.in_features, s.input_shape) for s, _ in costs.asked} == {
        (64, 32, (16, 32)), (48, 64, (16, 64)), (10, 48, (16, 48))
    }


def test_the_recorded_budget_limits_the_dense_layers() -> None:
    teacher, x = three_linear()
    # Folding the experts frees room under the budget for fc1 back to dense, not for fc2 as well.
    student = inherit(teacher, ExperimentalConfig(budget=0.6, experts=3, init="svd"), progress=False)
    target = student.inhernet_plan.target_params
    out = compact(student, example=x, rank_multiple=1, costs=FakeCosts(everything_slow=True))
    assert params(out) <= target
    dense = [n for n, e in out.inhernet_compact["layers"].items() if e["dense"]]
    kept = [n for n, e in out.inhernet_compact["layers"].items() if not e["dense"]]
    assert dense and kept, "the budget covers some dense layers but not all"
    assert all("budget" in out.inhernet_compact["layers"][n]["reason"] for n in kept)
    # Unconstrained, everything slower factorised returns to dense.
    free = compact(student, example=x, budget=1.0, rank_multiple=1, costs=FakeCosts(everything_slow=True))
    assert not blocks(free)


def rank_13() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A teacher of full-rank layers and its student at rank 13, where rounding down to 8 shows."""
    teacher, x = three_linear()
    return teacher, inherit(teacher, ExperimentalConfig(rank=13, experts=1, init="svd"), progress=False), x


def test_ranks_round_only_where_no_output_changes() -> None:
    """Default: up to the multiple (exact) where the budget has room, else kept; the outputs stay."""
    _, student, x = rank_13()
    assert student.fc1.rank == student.fc2.rank == 13
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no output change to warn about
        up = compact(student, example=x, costs=FakeCosts())  # a rank= model has no parameter budget
        kept = compact(student, example=x, budget=params(student), costs=FakeCosts())  # no room to round up
    assert (up.fc1.rank, up.fc2.rank) == (16, 16) and (kept.fc1.rank, kept.fc2.rank) == (13, 13)
    assert params(kept) <= params(student)
    for out in (up, kept):
        assert rel_err(run(out, x), run(student, x)) < 1e-5
        assert out.inhernet_compact["output_change"] < 1e-5
        assert out.inhernet_plan.total_params == params(out)
    assert "rounded up from 13 (exact)" in up.inhernet_compact["layers"]["fc1"]["rounding"]
    assert "kept" in kept.inhernet_compact["layers"]["fc1"]["rounding"]
    exact = compact(student, example=x, rank_multiple=1, costs=FakeCosts())
    assert (exact.fc1.rank, exact.fc2.rank) == (13, 13) and "rounding" not in exact.inhernet_compact["layers"]["fc1"]


def test_rounding_down_where_asked_and_the_change_is_reported() -> None:
    _, student, x = rank_13()
    down = compact(student, example=x, rank_multiple=8, tolerance=float("inf"), costs=FakeCosts())
    assert (down.fc1.rank, down.fc2.rank) == (8, 8) and params(down) < params(student)
    change = rel_err(run(down, x), run(student, x))
    assert change > 1e-2, "the test needs rounding down to show in the outputs"
    assert down.inhernet_compact["output_change"] == pytest.approx(change, rel=1e-4)
    assert "rounded down from 13" in down.inhernet_compact["layers"]["fc1"]["rounding"]
    with pytest.raises(ValueError, match="tolerance"):
        compact(student, example=x, tolerance=-1.0)


def test_a_dual_encoder_compacts_and_both_towers_count_as_output() -> None:
    teacher, batch = two_towers()
    calib = [batch, {k: torch.randn_like(v) for k, v in batch.items()}]
    student = inherit(teacher, InherConfig(budget=0.5, experts=1), calib=calib, progress=False)
    exact = compact(student, calib, example=calib[0], rank_multiple=1, costs=FakeCosts())
    assert exact.inhernet_compact["output_change"] < 1e-5
    down = compact(student, calib, example=calib[0], rank_multiple=8, tolerance=float("inf"), costs=FakeCosts())
    with torch.no_grad():
        want, got = (torch.cat([out.image_embeds, out.text_embeds], -1) for out in (student(**calib[0]), down(**calib[0])))
    change = float((got - want).abs().max() / want.abs().max())
    assert change > 1e-3, "the test needs rounding down to show in the outputs"
    assert down.inhernet_compact["output_change"] == pytest.approx(change, rel=1e-4)


def test_a_rounded_up_compact_model_saves_and_loads(tmp_path) -> None:
    _, student, x = rank_13()
    out = compact(student, example=x, costs=FakeCosts())
    save(out, tmp_path / "m")
    loaded = load(tmp_path / "m", three_linear()[0])
    assert {n: b.rank for n, b in blocks(loaded).items()} == {n: b.rank for n, b in blocks(out).items()}
    assert torch.equal(run(loaded, x), run(out, x))


def test_reranked_truncates_optimally_and_pads_exactly() -> None:
    _, student, x = rank_13()
    block = student.fc1
    w = (block.up.weight @ block.down.weight).detach().double()
    # The truncation is the best approximation of B A at the lower rank (Eckart-Young).
    cut = reranked(block, 5)
    s = torch.linalg.svdvals(w)
    err = torch.linalg.matrix_norm(w - (cut.up.weight @ cut.down.weight).detach().double())
    assert float(err) == pytest.approx(float(s[5:].norm()), rel=1e-4)
    assert torch.equal(cut.up.bias, block.up.bias)
    padded = reranked(block, 16)
    assert padded.rank == 16 and torch.equal(padded(x), block(x))
    with pytest.raises(ValueError, match="rank"):
        reranked(block, 33)


def test_rounding_down_is_exact_when_the_product_has_low_rank() -> None:
    teacher, x = three_linear()
    with torch.no_grad():  # fc1 of rank 5, inherited at rank 13, rounded to 8: nothing is lost
        teacher.fc1.weight.copy_(torch.randn(64, 5) @ torch.randn(5, 32))
    student = inherit(teacher, ExperimentalConfig(rank=13, experts=1, init="svd"), progress=False)
    out = compact(student, example=x, rank_multiple=8, costs=FakeCosts())
    assert out.fc1.rank == 8
    assert rel_err(out.fc1(x), student.fc1(x)) < 1e-5


@pytest.mark.parametrize("factory", [mlp, cnn, bert_tiny, gpt2_tiny], ids=lambda f: f.__name__)
def test_full_rank_compacts_to_the_teacher(factory) -> None:
    teacher, batch = factory()
    student = inherit(teacher, ExperimentalConfig(rank="full", experts=3, init="svd"), calib=[batch], progress=False)
    assert blocks(student)
    out = compact(student, example=batch, costs=NoCosts())  # no measurement needed: all at full rank
    assert not blocks(out), "every full-rank block has more parameters than dense: all return to dense"
    for name, module in teacher.named_modules():
        assert type(out.get_submodule(name)) is type(module), name
    assert params(out) == params(teacher)
    assert rel_err(run(out, batch), run(teacher, batch)) <= 1e-4
    assert all(e["dense"] for e in out.inhernet_compact["layers"].values())


def test_save_and_load_keep_the_compact_form(tmp_path) -> None:
    teacher, batch = bert_tiny()
    student = inherit(teacher, ExperimentalConfig(budget=0.5, init="svd"), calib=[batch], progress=False)
    # The attention projections (32 -> 32) are slower factorised, the rest faster.
    out = compact(student, example=batch, budget=1.0, rank_multiple=4, costs=FakeCosts(slow={(32, 32)}))
    assert blocks(out) and any(type(m) is nn.Linear for m in out.modules())
    save(out, tmp_path / "m")
    loaded = load(tmp_path / "m", bert_tiny()[0])
    assert torch.equal(run(loaded, batch), run(out, batch))
    assert loaded.inhernet_compact == json.loads(json.dumps(out.inhernet_compact))
    assert {n: b.rank for n, b in blocks(loaded).items()} == {n: b.rank for n, b in blocks(out).items()}
    assert all(b.experts == 1 for b in blocks(loaded).values())
    # A compact model with every block back to dense saves and loads too.
    full = compact(inherit(teacher, ExperimentalConfig(rank="full", init="svd"), progress=False), example=batch)
    save(full, tmp_path / "full")
    again = load(tmp_path / "full", bert_tiny()[0])
    assert torch.equal(run(again, batch), run(full, batch))


def test_onnx_export_of_the_compact_model(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    teacher, x = cnn()
    student = inherit(teacher, ExperimentalConfig(rank=3, experts=3, init="svd"), calib=[x], progress=False)
    assert {"0", "2"} <= set(blocks(student))
    out = compact(student, [x], rank_multiple=1, budget=1.0, costs=FakeCosts(slow={(8, 3)}))  # conv 0 only
    assert set(blocks(out)) == {"2"} and type(out[0]) is nn.Conv2d
    path = export_onnx(out, x, tmp_path / "c.onnx")
    assert verify_onnx(path, out, torch.randn(3, 3, 8, 8)) < 1e-5


def test_argument_errors() -> None:
    teacher, x = three_linear()
    student = inherit(teacher, ExperimentalConfig(rank=8, experts=1, init="svd"), progress=False)
    with pytest.raises(ValueError, match="no InherNet blocks"):
        compact(teacher, example=x)
    with pytest.raises(ValueError, match="rank_multiple"):
        compact(student, example=x, rank_multiple=0)
    with pytest.raises(ValueError, match="example input"):
        compact(student)
    with pytest.raises(TypeError, match="costs"):
        compact(student, example=x, costs=object())
    with pytest.raises(ValueError, match="budget"):
        compact(student, example=x, budget=1.5)
    with pytest.raises(TypeError, match="model"):
        compact("not a model", example=x)


# -- the cost table -------------------------------------------------------------------------------
def test_cost_table_measures_once_and_caches_json(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("INHERNET_HOME", str(tmp_path))
    shape = LayerShape("linear", 24, 16, True, (4, 16), "float32")
    table = CostTable(repeats=1, min_time=1e-5)
    assert table.path is not None and table.path.parent == tmp_path / "costs"
    assert table.dense(shape) > 0 and table.factorised(shape, 3) > 0
    body = json.loads(table.path.read_text())
    assert body["threads"] == torch.get_num_threads()
    assert [r for r, _ in body["entries"][shape.key()]["ranks"]] == rank_points(16)

    def no_measuring(_shape):
        raise AssertionError("a cached shape was measured again")

    again = CostTable(repeats=1, min_time=1e-5, check_drift=False)
    monkeypatch.setattr(again, "measure", no_measuring)
    assert again.dense(shape) == table.dense(shape)
    # A conv and an embedding shape measure too (their forms are built through the kinds registry).
    for other in (LayerShape("conv2d", 8, 4, True, (1, 4, 6, 6), "float32", (3, 3), (1, 1), (1, 1), (1, 1)),
                  LayerShape("embedding", 8, 50, False, (2, 5), "float32")):
        assert CostTable(cache=False, repeats=1, min_time=1e-5).factorised(other, 2) > 0


def test_a_cached_table_is_rescaled_to_the_machine_now(tmp_path, monkeypatch) -> None:
    """A cache written while the machine ran 10x slower is scaled back (with a warning), not mixed
    with whole-model times measured now."""
    monkeypatch.setenv("INHERNET_HOME", str(tmp_path))
    shape = LayerShape("linear", 256, 256, True, (64, 256), "float32")
    table = CostTable()
    live_dense, live_rank = table.dense(shape), table.factorised(shape, 8)
    body = json.loads(table.path.read_text())
    entry = body["entries"][shape.key()]
    entry["dense"] *= 10
    entry["ranks"] = [[r, s * 10] for r, s in entry["ranks"]]
    table.path.write_text(json.dumps(body))

    again = CostTable()
    with pytest.warns(UserWarning, match="faster now than when they were cached"):
        dense = again.dense(shape)
    # within 2x of the times measured now (timing noise), where the unscaled cache says 10x
    assert 0.05 < again.drift < 0.2
    assert live_dense / 2 < dense < 2 * live_dense
    assert live_rank / 2 < again.factorised(shape, 8) < 2 * live_rank
    assert CostTable(check_drift=False).dense(shape) == pytest.approx(10 * live_dense)


def test_cost_table_interpolates_linearly_in_rank() -> None:
    shape = LayerShape("linear", 64, 64, False, (1, 64), "float32")
    table = CostTable(cache=False)
    table.entries[shape.key()] = {"dense": 1.0, "ranks": [[1, 0.1], [16, 0.4], [64, 1.6]]}
    assert table.factorised(shape, 1) == pytest.approx(0.1)
    assert table.factorised(shape, 8) == pytest.approx(0.1 + 0.3 * 7 / 15)
    assert table.factorised(shape, 40) == pytest.approx(1.0)
    assert table.dense(shape) == 1.0
    with pytest.raises(ValueError, match="rank"):
        table.factorised(shape, 0)


def test_rank_points() -> None:
    assert rank_points(1) == [1]
    for full in (3, 10, 64, 384):
        pts = rank_points(full)
        assert pts[0] == 1 and pts[-1] == full and pts == sorted(set(pts))
    assert all(p % 8 == 0 for p in rank_points(384)[1:])


def test_a_block_that_does_not_run_on_the_example_stays_factorised() -> None:
    teacher, x = three_linear()
    teacher.spare = nn.Linear(64, 64)  # never called by forward
    student = inherit(teacher, ExperimentalConfig(rank=8, experts=1, init="svd"), progress=False)
    costs = FakeCosts(everything_slow=True)
    out = compact(student, example=x, budget=1.0, rank_multiple=1, costs=costs)
    assert isinstance(out.spare, InherLinear)
    assert "did not run" in out.inhernet_compact["layers"]["spare"]["reason"]
    assert all(s.out_features != 64 or s.in_features != 64 for s, _ in costs.asked)
