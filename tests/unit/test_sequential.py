"""Sequential (block-by-block) calibration: full-rank invariant, bounded statistics."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import tiny_models as tm
from inhernet import InherBlock, InherConfig, inherit, plan
from inhernet.experimental import ExperimentalConfig
from inhernet.sequential import capture_stack_inputs, run_block

calibration_module = importlib.import_module("inhernet.calibration")


def _llama_6() -> tuple[nn.Module, list[torch.Tensor]]:
    """A 6-block Llama and 2,048 calibration tokens: enough for well-posed 64-wide statistics."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config).eval()
        calib = [torch.randint(0, 100, (4, 32)) for _ in range(16)]
    return model, calib


@pytest.mark.parametrize("factory", [tm.llama_tiny, tm.bert_tiny, tm.gpt2_tiny], ids=["llama", "bert", "gpt2"])
@pytest.mark.parametrize("experts", [1, 3])
def test_full_rank_reproduces_teacher(factory, experts: int) -> None:
    teacher, batch = factory()
    want = tm.run(teacher, batch)
    before = tm.state_copy(teacher)
    cfg = InherConfig(rank="full", experts=experts, calibration="sequential")
    student = inherit(teacher, cfg, calib=[batch, batch], progress=False).eval()
    assert tm.same_state(before, tm.state_copy(teacher)), "the teacher must not change"
    assert any(isinstance(m, InherBlock) for m in student.modules())
    assert all(r.rank == r.max_rank for r in student.inhernet_plan.factorised)
    assert tm.rel_err(tm.run(student, batch), want) <= 1e-4


def test_bert_embeddings_and_classifier_are_calibrated_around_the_stack() -> None:
    """Layers before the stack (embeddings) and after it (pooler, classifier) are factorised too."""
    teacher, batch = tm.bert_tiny()
    student = inherit(teacher, InherConfig(rank="full", calibration="sequential"), calib=[batch], progress=False)
    names = {r.name for r in student.inhernet_plan.factorised}
    assert "bert.embeddings.word_embeddings" in names and "classifier" in names and "bert.pooler.dense" in names
    for name in ("bert.embeddings.word_embeddings", "classifier", "bert.pooler.dense"):
        assert isinstance(student.get_submodule(name), InherBlock)


def _hidden(model: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.model(input_ids=b).last_hidden_state for b in batches])


def test_sequential_whitens_later_blocks_on_the_compressed_inputs() -> None:
    """Block 0 sees the teacher's inputs either way (same factors as one-pass); later blocks do not."""
    teacher, calib = _llama_6()
    cfg = {"budget": 0.7, "experts": 1, "allocation": "uniform", "drop_blocks": 0}  # every block kept
    one_pass = inherit(teacher, ExperimentalConfig(**cfg, calibration="one-pass"), calib=calib, progress=False)
    staged = inherit(teacher, ExperimentalConfig(**cfg, calibration="sequential"), calib=calib, progress=False)
    assert one_pass.inhernet_plan.ranks() == staged.inhernet_plan.ranks()
    first, last = "model.layers.0.mlp.down_proj", "model.layers.5.mlp.down_proj"
    a, b = one_pass.get_submodule(first).state_dict(), staged.get_submodule(first).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    a, b = one_pass.get_submodule(last).state_dict(), staged.get_submodule(last).state_dict()
    assert not all(torch.allclose(a[k], b[k], atol=1e-3) for k in a)


def test_plan_uses_the_teachers_spectra_either_way() -> None:
    teacher, calib = _llama_6()
    one_pass = plan(teacher, InherConfig(budget=0.7, calibration="one-pass"), calib=calib).ranks()
    staged = plan(teacher, InherConfig(budget=0.7, calibration="sequential"), calib=calib).ranks()
    assert staged == one_pass


def test_statistics_of_one_block_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequential calibration never holds more covariances than one block has layers; one-pass holds all."""
    live: set[int] = set()
    peak = {"n": 0}
    original_init = calibration_module.InputCovariance.__post_init__

    def tracking_init(self) -> None:
        original_init(self)
        live.add(id(self))
        peak["n"] = max(peak["n"], len(live))

    import weakref

    def track(self) -> None:
        tracking_init(self)
        weakref.finalize(self, live.discard, id(self))

    monkeypatch.setattr(calibration_module.InputCovariance, "__post_init__", track)
    teacher, calib = _llama_6()
    per_block = sum(isinstance(m, nn.Linear) for m in teacher.model.layers[0].modules())
    total = sum(r.rank is not None for r in plan(teacher, InherConfig(rank="full", init="svd")).layers)

    # every block kept, so that one-pass below holds a statistic for every layer
    inherit(teacher, InherConfig(budget=0.7, calibration="sequential", drop_blocks=0), calib=calib, progress=False)
    assert peak["n"] <= per_block
    live.clear()
    peak["n"] = 0
    inherit(teacher, InherConfig(budget=0.7, calibration="one-pass", drop_blocks=0), calib=calib, progress=False)
    assert peak["n"] == total > per_block


def test_capture_drops_the_key_value_cache() -> None:
    teacher, batch = tm.llama_tiny()
    inputs = capture_stack_inputs(teacher, teacher.model.layers[0], [batch], "cpu")
    assert len(inputs.hidden) == 1 and inputs.hidden[0].shape == (*batch.shape, 32)
    kwargs = inputs.kwargs[0]
    assert all(kwargs.get(k) is None for k in ("cache", "past_key_values"))
    assert kwargs.get("use_cache", False) is False
    # Running the blocks one by one reproduces the model's last hidden state.
    hidden = inputs
    for block in teacher.model.layers:
        hidden.hidden = [run_block(block, hidden, 0)]
    with torch.no_grad():
        want = teacher.model(input_ids=batch).last_hidden_state
        got = teacher.model.norm(hidden.hidden[0])
    assert tm.rel_err(got, want) <= 1e-5


def test_errors_name_the_problem() -> None:
    teacher, batch = tm.mlp()
    with pytest.raises(ValueError, match="no stack of repeated layers"):
        inherit(teacher, InherConfig(rank="full", calibration="sequential"), calib=[batch], progress=False)
    llama, _ = tm.llama_tiny()
    with pytest.raises(ValueError, match="calib is empty"):
        capture_stack_inputs(llama, llama.model.layers[0], [], "cpu")
    with pytest.raises(ValueError, match="calibration must be one of"):
        InherConfig(calibration="twice")
    with pytest.raises(ValueError, match="needs calibration data"):
        inherit(llama, InherConfig(rank="full", calibration="sequential"), progress=False)


def test_one_shot_iterator_is_accepted() -> None:
    teacher, batch = tm.llama_tiny()
    want = tm.run(teacher, batch)
    student = inherit(teacher, InherConfig(rank="full", calibration="sequential"), calib=iter([batch]),
                      progress=False)
    assert tm.rel_err(tm.run(student.eval(), batch), want) <= 1e-4


def test_a_read_only_pass_runs_each_block_once_per_batch() -> None:
    """Measuring the teacher's spectra (a caller that replaces nothing) reuses each block's outputs from its
    statistics pass; a caller that replaces layers runs each block again. The spectra are the one-pass ones."""
    import copy

    from inhernet.discovery import find_layers
    from inhernet.sequential import sequential_factors
    from inhernet.spectra import decompose
    from inhernet.stack import replace_module

    teacher, calib = _llama_6()
    cfg = InherConfig(budget=0.7, calibration="one-pass").resolved(teacher)
    # The stack's layers only: a layer after the stack (lm_head) is calibrated in one more whole pass.
    layers = {n: v for n, v in find_layers(teacher, cfg, calib[0]).open.items() if n.startswith("model.layers.")}
    one_pass = decompose(teacher, layers, cfg, calib, progress=False)
    calls = {"n": 0}

    def count(*_: object) -> None:
        calls["n"] += 1

    blocks = len(teacher.model.layers)
    handles = [block.register_forward_pre_hook(count) for block in teacher.model.layers]
    try:
        stages = sequential_factors(teacher, layers, calib, progress=False)
        energies = {name: factors.output_energy for name, factors in stages}
        # + 1: the capture pass enters the first block once per batch (and stops there)
        assert calls["n"] == (blocks + 1) * len(calib)
        calls["n"] = 0
        student = copy.deepcopy(teacher)
        todo = {name: (student.get_submodule(name), kind) for name, (_, kind) in layers.items()}
        for name, _ in sequential_factors(student, todo, calib, progress=False):
            replace_module(student, name, copy.deepcopy(student.get_submodule(name)))
        assert calls["n"] == (2 * blocks + 1) * len(calib)  # statistics, then the replaced block's outputs
    finally:
        for h in handles:
            h.remove()
    assert set(energies) == set(one_pass)
    for name, f in one_pass.items():
        torch.testing.assert_close(energies[name], f.output_energy, rtol=1e-6, atol=1e-9)


def test_the_captured_hidden_states_are_released(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays bounded by one block's hidden states: the stack inputs captured at the start are
    released once the first block has run."""
    import weakref

    from inhernet import sequential

    teacher, calib = _llama_6()
    captured: list[weakref.ref] = []
    alive_later: list[int] = []
    real = sequential.run_block

    def spy(block: nn.Module, inputs, i: int) -> torch.Tensor:
        if not captured:
            captured.extend(weakref.ref(h) for h in inputs.hidden)
        elif inputs.hidden[0] is not captured[0]():  # past the first block
            alive_later.append(sum(r() is not None for r in captured))
        return real(block, inputs, i)

    monkeypatch.setattr(sequential, "run_block", spy)
    inherit(teacher, InherConfig(budget=0.7, calibration="sequential"), calib=calib, progress=False)
    assert alive_later and max(alive_later) == 0
