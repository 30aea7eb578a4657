"""KD against a sparse teacher cache: top-k log-probabilities + a rest bucket (tiny models, CPU, no downloads)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmark_scripts import load_benchmark
from inhernet.batches import move_batch
from inhernet.distillation import (
    DistillConfig,
    TeacherTopK,
    WithTeacherTopK,
    distill,
    kd_loss,
    precompute_teacher_logits,
    precompute_teacher_topk,
    teacher_topk,
    topk_kd_loss,
)

V = 30  # classes / vocabulary of the loss-level tests


def _lm_logits(seed: int, n: int = 2, length: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, length, V, generator=g), 3 * torch.randn(n, length, V, generator=g)


def _loss_and_grad(fn, s: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    s = s.clone().requires_grad_()
    loss = fn(s, *args)
    loss.backward()
    return loss.detach(), s.grad


# ---------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_k_equal_to_vocab_is_the_full_kd_loss_with_its_gradients(alpha: float) -> None:
    s, t = _lm_logits(0)
    labels = torch.tensor([[3, 1, 2, 5, 7], [0, 4, 9, -100, -100]])  # second sequence padded
    T = 2.0
    cache = teacher_topk(t, V, T, dtype=torch.float32)
    assert torch.isneginf(cache.log_rest).all()
    for lab in (labels, None):
        want, want_grad = _loss_and_grad(kd_loss, s, t, lab, T, alpha)
        got, got_grad = _loss_and_grad(topk_kd_loss, s, cache, lab, T, alpha)
        assert torch.isfinite(got_grad).all()
        assert abs(float(got - want)) <= 1e-5
        assert (got_grad - want_grad).abs().max() <= 1e-5
    # classification logits (N, C)
    sc, tc = s[0], t[0]
    want, want_grad = _loss_and_grad(kd_loss, sc, tc, labels[0], T, alpha)
    got, got_grad = _loss_and_grad(topk_kd_loss, sc, teacher_topk(tc, V, T, torch.float32), labels[0], T, alpha)
    assert abs(float(got - want)) <= 1e-5 and (got_grad - want_grad).abs().max() <= 1e-5


def test_small_k_is_a_nonnegative_lower_bound_zero_at_the_teacher() -> None:
    s, t = _lm_logits(1)
    T = 2.0
    full = kd_loss(s, t, None, T)
    for k in (1, 3, 10):
        for dtype in (torch.float32, torch.float16):
            cache = teacher_topk(t, k, T, dtype=dtype)
            loss = topk_kd_loss(s, cache, None, T)
            assert 0 <= loss <= full * (1 + 1e-3)  # merging classes never increases a KL
            # the student equal to the teacher: 0 up to float32 sums and float16 rounding of the cache
            at_teacher = topk_kd_loss(t, cache, None, T)
            assert abs(float(at_teacher)) <= (1e-6 if dtype == torch.float32 else 1e-4)
        # float16 storage changes the loss by far less than the choice of k does
        exact = topk_kd_loss(s, teacher_topk(t, k, T, torch.float32), None, T)
        assert abs(float(topk_kd_loss(s, teacher_topk(t, k, T), None, T) - exact)) <= 1e-3 * float(exact)
    # the rest bucket: log of the teacher's probability outside the kept tokens
    cache = teacher_topk(t, 3, T, torch.float32)
    p = torch.softmax(t / T, -1)
    torch.testing.assert_close(cache.log_rest.exp(), 1 - p.topk(3, -1).values.sum(-1))


def test_small_k_is_close_to_the_full_loss_for_a_peaked_teacher() -> None:
    s, t = _lm_logits(2)
    top = torch.randint(0, V, t.shape[:-1], generator=torch.Generator().manual_seed(3))
    t = t.scatter_add(-1, top[..., None], torch.full((*t.shape[:-1], 1), 40.0))  # one token dominates
    T = 2.0
    full = kd_loss(s, t, None, T)
    cache = teacher_topk(t, 4, T)
    assert cache.log_rest.exp().max() < 1e-4
    assert topk_kd_loss(s, cache, None, T) == pytest.approx(float(full), rel=1e-3)


def test_padded_positions_are_left_out_as_kd_loss_leaves_them() -> None:
    s, t = _lm_logits(4)
    labels = torch.tensor([[3, 1, 2, 5, 7], [0, 4, -100, -100, -100]])
    T, alpha = 2.0, 0.5
    cache = teacher_topk(t, 5, T)
    base = topk_kd_loss(s, cache, labels, T, alpha)
    # positions whose target is ignored (and the last one, which predicts nothing) do not matter
    s2, t2 = s.clone(), t.clone()
    s2[1, 1:] += 10 * torch.randn(4, V)
    t2[1, 1:] -= 10 * torch.randn(4, V)
    s2[0, -1] += 5
    cache2 = teacher_topk(t2, 5, T)
    torch.testing.assert_close(topk_kd_loss(s2, cache2, labels, T, alpha), base)
    _, grad = _loss_and_grad(topk_kd_loss, s, cache, labels, T, alpha)
    assert grad[1, 1:].abs().sum() == 0 and grad[0, :-1].abs().sum() > 0
    # the KD term alone equals the mean over the valid positions of the per-position losses
    per_position = [
        topk_kd_loss(s[b, pos : pos + 1], TeacherTopK(*(f[b, pos : pos + 1] for f in cache)), None, T)
        for b, pos in ((0, 0), (0, 1), (0, 2), (0, 3), (1, 0))
    ]
    torch.testing.assert_close(topk_kd_loss(s, cache, labels, T, 1.0), torch.stack(per_position).mean())


def test_bad_k_and_bad_caches_raise_clear_errors() -> None:
    s, t = _lm_logits(5)
    for k in (0, V + 1, 2.5, True, None):
        with pytest.raises(ValueError, match=rf"teacher_topk must be an int in \[1, {V}\]"):
            teacher_topk(t, k, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be positive"):
        teacher_topk(t, 3, 0.0)
    with pytest.raises(ValueError, match="one rest per student position"):
        topk_kd_loss(s[:, :4], teacher_topk(t, 3, 2.0))
    for k in (0, -1, 1.5):
        with pytest.raises(ValueError, match=r"DistillConfig\.teacher_topk must be None"):
            DistillConfig(teacher_topk=k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs loss='kd'"):
        DistillConfig(teacher_topk=4, loss="contrastive")
    assert DistillConfig(teacher_topk=4).to_dict()["teacher_topk"] == 4


# ---------------------------------------------------------------------------------- the cache, in training
def _tiny_llama(seed: int = 0):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def _lm_rows(n: int = 10, length: int = 12) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, 100, (n, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[::3, 9:] = 0  # padded tails
    labels = ids.masked_fill(mask == 0, -100)
    return [{"input_ids": i, "attention_mask": m, "labels": lab} for i, m, lab in zip(ids, mask, labels, strict=True)]


def test_cache_is_built_in_one_pass_holds_the_teachers_top_k_and_the_predicted_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    teacher = _tiny_llama()
    rows = _lm_rows()
    calls = []
    handle = teacher.register_forward_hook(lambda *_: calls.append(1))
    cache = precompute_teacher_topk(teacher, rows, k=8, temperature=2.0, batch_size=4)
    handle.remove()
    assert len(calls) == 3  # ceil(10 / 4) batches, each once
    assert isinstance(cache, WithTeacherTopK) and (cache.k, cache.temperature, len(cache)) == (8, 2.0, 10)
    logprobs, indices, log_rest = cache.cache
    assert (logprobs.dtype, indices.dtype, log_rest.dtype) == (torch.float16, torch.int32, torch.float32)
    assert logprobs.shape == indices.shape == (10, 12, 8) and log_rest.shape == (10, 12)
    assert cache.nbytes == 10 * 12 * (8 * (2 + 4) + 4)
    # what it holds is the teacher's top 8 at T = 2 (its logits on the whole set at once)
    batch = {k: torch.stack([r[k] for r in rows]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        want = teacher_topk(teacher(**batch).logits, 8, 2.0, torch.float32)
    torch.testing.assert_close(logprobs.float(), want.logprobs, atol=1e-2, rtol=1e-3)
    torch.testing.assert_close(log_rest, want.log_rest, atol=1e-4, rtol=1e-4)
    assert (indices[..., :3] == want.indices[..., :3]).float().mean() > 0.99  # ties aside
    # examples carry their own slice, and the default collation batches the fields
    example = cache[4]
    assert isinstance(example["teacher_logits"], TeacherTopK) and example["teacher_logits"].indices.shape == (12, 8)
    collated = next(iter(DataLoader(cache, batch_size=3)))["teacher_logits"]
    assert isinstance(collated, TeacherTopK) and collated.logprobs.shape == (3, 12, 8)
    moved = move_batch({"teacher_logits": collated}, "cpu")["teacher_logits"]  # a NamedTuple stays one
    assert isinstance(moved, TeacherTopK) and torch.equal(moved.indices, collated.indices)
    # the progress bar is only a view: the same cache; the bar names its pass on stderr
    shown = precompute_teacher_topk(teacher, rows, k=8, temperature=2.0, batch_size=4, progress=True)
    assert all(torch.equal(a, b) for a, b in zip(shown.cache, cache.cache, strict=True))
    assert "teacher top-k" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 100\]"):
        precompute_teacher_topk(teacher, rows, k=101, temperature=2.0)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        precompute_teacher_topk(teacher, rows, k=0, temperature=2.0)


def _config(tmp_path: Path, **kw) -> DistillConfig:
    kw = {"accelerator": "cpu", "log_dir": str(tmp_path), "steps": 10, "lr": 1e-2, "temperature": 2.0,
          "alpha": 0.5, "metric": "perplexity", "val_every": 0, "val_at_start": False, **kw}
    return DistillConfig(**kw)


def test_training_on_the_cache_never_runs_the_teacher_and_matches_live_top_k(tmp_path: Path) -> None:
    teacher = _tiny_llama()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5 * p.abs().mean() * torch.randn_like(p))
    live_student = copy.deepcopy(student)
    rows = _lm_rows(8)
    cache = precompute_teacher_topk(teacher, rows, k=8, temperature=2.0, batch_size=4)

    calls = []
    handle = teacher.register_forward_hook(lambda *_: calls.append(1))
    history = distill(student, teacher, DataLoader(cache, batch_size=4), None, _config(tmp_path / "a", teacher_topk=8))
    assert calls == [], "the teacher ran although its top-k came with the batches"
    handle.remove()
    losses = [v for _, v in history["train_loss"]]
    assert len(losses) == 10 and losses[-1] < losses[0]

    # teacher_topk without a cache takes the same top-k from the live teacher at every step: the same run
    live = distill(live_student, teacher, DataLoader(rows, batch_size=4), None, _config(tmp_path / "b", teacher_topk=8))
    assert [v for _, v in live["train_loss"]] == pytest.approx(losses, rel=1e-4)

    # a cache made at another k or temperature than the config's is refused before training
    with pytest.raises(ValueError, match=r"set DistillConfig\(teacher_topk=8, temperature=2\)"):
        distill(copy.deepcopy(teacher), teacher, DataLoader(cache, batch_size=4), None, _config(tmp_path / "c"))
    with pytest.raises(ValueError, match="temperature"):
        distill(copy.deepcopy(teacher), teacher, DataLoader(cache, batch_size=4), None,
                _config(tmp_path / "d", teacher_topk=8, temperature=4.0))


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_classifier_with_all_classes_kept_trains_as_full_logit_kd(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = _MLP().eval()
    x = torch.randn(64, 12)
    with torch.no_grad():
        y = teacher(x).argmax(-1)
    student = _MLP()
    other = copy.deepcopy(student)
    data = TensorDataset(x, y)
    full = precompute_teacher_logits(teacher, data)
    sparse = precompute_teacher_topk(teacher, data, k=4, temperature=2.0, dtype=torch.float32)
    assert len(sparse[0]) == 3 and isinstance(sparse[0][2], TeacherTopK)  # (inputs, labels, cache)
    kw = {"accelerator": "cpu", "steps": 6, "lr": 1e-2, "temperature": 2.0, "val_every": 0, "val_at_start": False}
    a = distill(student, teacher, DataLoader(full, batch_size=16), None, DistillConfig(log_dir=str(tmp_path / "a"), **kw))
    b = distill(other, teacher, DataLoader(sparse, batch_size=16), None,
                DistillConfig(log_dir=str(tmp_path / "b"), teacher_topk=4, **kw))
    assert [v for _, v in b["train_loss"]] == pytest.approx([v for _, v in a["train_loss"]], rel=1e-5)
    for p, q in zip(student.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)


def test_step_time_script_smoke_on_a_tiny_llama(tmp_path: Path) -> None:
    """benchmarks/smollm2_step_time.py --tiny: the three steps run interleaved and the table is written."""
    import json

    pytest.importorskip("transformers")
    script = load_benchmark("smollm2_step_time")
    threads = torch.get_num_threads()
    try:
        result = script.main(["--tiny", "--threads", "1", "--reps", "2", "--k", "8", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "smollm2-step-time.json").read_text())
    assert saved["steps"].keys() == {"plain", "kd-live", "kd-topk"}
    assert all(len(v["times_s"]) == 2 and v["median_s"] > 0 for v in saved["steps"].values())
    assert saved["cache"]["bytes_per_block"] == 128 * (8 * 6 + 4)  # positions x (k x 6 + the rest's 4)
    assert saved["student_params"] < saved["teacher_params"] and result["ratios"].keys() == {"kd-live/plain", "kd-topk/plain"}
    md = (tmp_path / "smollm2-step-time.md").read_text()
    assert md.startswith("Command: `OMP_NUM_THREADS=1 python -m inhernet_bench.scripts.smollm2_step_time --tiny") and "top-8 cache" in md


def test_the_bench_keeps_a_cache_on_disk_and_reads_it_back_without_the_teacher(tmp_path: Path, monkeypatch) -> None:
    """A second process over the same teacher and examples reads the cache the first wrote; another example,
    teacher, k or temperature makes another cache."""
    from inhernet_bench import topk_store
    from inhernet_bench.runner import teacher_digest

    monkeypatch.setenv("INHERNET_HOME", str(tmp_path))
    teacher = _tiny_llama()
    rows, digest = _lm_rows(), teacher_digest(teacher)
    made = topk_store.stored_teacher_topk(teacher, digest, rows, 8, 2.0)
    (stored,) = (tmp_path / "teacher-topk").glob("*.safetensors")

    def no_teacher(*_: object, **__: object) -> None:
        raise AssertionError("the teacher ran although its cache was stored")

    monkeypatch.setattr(topk_store, "precompute_teacher_topk", no_teacher)
    again = topk_store.stored_teacher_topk(teacher, digest, rows, 8, 2.0)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(made.cache, again.cache, strict=True))
    assert again.k == 8 and again.temperature == 2.0 and torch.equal(again[3]["input_ids"], rows[3]["input_ids"])

    changed = [dict(r) for r in rows]
    changed[5] = {**changed[5], "input_ids": changed[5]["input_ids"].flip(0)}
    others = {
        topk_store.topk_store_path(digest, changed, 8, 2.0), topk_store.topk_store_path("another", rows, 8, 2.0),
        topk_store.topk_store_path(digest, rows, 4, 2.0), topk_store.topk_store_path(digest, rows, 8, 1.0),
    }
    assert len(others) == 4 and stored not in others
