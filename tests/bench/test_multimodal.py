"""Dual encoders: Hugging Face ``CLIPModel`` inherits as-is, both towers at once, with per-tower budgets;
contrastive distillation and the retrieval metrics."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from inhernet import InherBlock, InherConfig, evaluate, inherit, load, plan, save
from inhernet.distillation import DistillConfig, contrastive_kd_loss, distill, precompute_teacher_logits
from inhernet.dual import DUAL_METRICS, DualOutput, dual_metrics, dual_output
from inhernet.experimental.distillation import ExperimentalDistillConfig

TOL = 1e-4
OUTPUTS = ("logits_per_image", "text_embeds", "image_embeds")
TOWERS = {"vision_model*": 0.3, "text_model*": 0.5}


def clip_tiny():
    """A randomly initialised two-layer CLIP (text vocab 99, 16x16 images) and one batch of 4 pairs."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    vision = dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
        ids = torch.randint(3, 99, (4, 7))
        ids[:, -1] = 2  # CLIP pools the text at its end-of-text token
        batch = {"input_ids": ids, "attention_mask": torch.ones(4, 7, dtype=torch.long),
                 "pixel_values": torch.randn(4, 3, 16, 16)}
    return model, batch


def _outputs(model, batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**batch)
    return {k: out[k] for k in OUTPUTS}


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.fixture(scope="module")
def clip():
    pytest.importorskip("transformers")
    return clip_tiny()


@pytest.mark.parametrize(("experts", "init"), [(1, "svd"), (3, "whiten")])
def test_clip_full_rank_reproduces_both_towers(clip, experts: int, init: str) -> None:
    teacher, batch = clip
    want = _outputs(teacher, batch)
    cfg = InherConfig(rank="full", experts=experts, init=init)
    student = inherit(teacher, cfg, calib=[batch] if init == "whiten" else None, progress=False).eval()

    names = [n for n, m in student.named_modules() if isinstance(m, InherBlock)]
    assert any(n.startswith("vision_model.") for n in names) and any(n.startswith("text_model.") for n in names)
    assert {"visual_projection", "text_projection"} <= set(names)
    got = _outputs(student, batch)
    for key in OUTPUTS:
        assert _rel_err(got[key], want[key]) <= TOL, key


def test_open_clip_full_rank_reproduces_both_towers() -> None:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # the dev extra installs open-clip-torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = CLIP(
            embed_dim=16, vision_cfg=CLIPVisionCfg(layers=2, width=32, patch_size=4, image_size=16, head_width=16),
            text_cfg=CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=2, layers=2),
        ).eval()
        batch = {"image": torch.randn(3, 3, 16, 16), "text": torch.randint(1, 50, (3, 8))}
    with torch.no_grad():
        want = dual_output(teacher(**batch)).logits_per_image
        student = inherit(teacher, InherConfig(rank="full", experts=3), calib=[batch], progress=False).eval()
        got = dual_output(student(**batch)).logits_per_image
    assert _rel_err(got, want) <= TOL
    rows = {r.name: r for r in student.inhernet_plan.layers}
    assert rows["transformer.resblocks.0.mlp.c_proj"].rank is not None
    # open_clip reads c_fc's weight dtype outside its forward: found on the example, only metadata, so the
    # layer is factorised and the block's weight view answers the dtype (the forward above ran).
    assert rows["transformer.resblocks.0.mlp.c_fc"].rank is not None
    # Without an example input it is factorised too.
    fallback = {r.name: r for r in plan(teacher, InherConfig(rank="full", init="svd")).layers}
    assert fallback["transformer.resblocks.0.mlp.c_fc"].rank is not None


def test_clip_embeddings_whose_weight_is_read_are_factorised(clip) -> None:
    # Their readers get the weight the block computes (test_clip_full_rank_reproduces_both_towers).
    rows = {r.name: r for r in plan(clip[0], InherConfig(rank="full", init="svd")).layers}
    for name in ("vision_model.embeddings.patch_embedding", "vision_model.embeddings.position_embedding",
                 "text_model.embeddings.position_embedding", "text_model.embeddings.token_embedding"):
        assert rows[name].rank is not None


def test_clip_save_load_roundtrip(clip, tmp_path: Path) -> None:
    teacher, batch = clip
    student = inherit(teacher, InherConfig(budget=0.6, experts=3), calib=[batch], progress=False).eval()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))  # off the init, as after fine-tuning
    want = _outputs(student, batch)
    loaded = load(save(student, tmp_path / "clip"), base=clip_tiny()[0])
    got = _outputs(loaded, batch)
    for key in OUTPUTS:
        assert torch.equal(got[key], want[key]), key


def _tower_params(rows, prefix: str) -> tuple[int, int]:
    mine = [r for r in rows if r.name.startswith(prefix)]
    return sum(r.params_before for r in mine), sum(r.params_after for r in mine)


def test_per_tower_budgets_are_met_separately(clip) -> None:
    teacher, batch = clip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # coarse rank steps on a tiny model may undershoot by >2%
        p = plan(teacher, InherConfig(budgets=TOWERS, budget=0.9, experts=1), calib=[batch])
    for prefix, budget in (("vision_model", 0.3), ("text_model", 0.5)):
        before, after = _tower_params(p.layers, prefix)
        assert 0.8 * budget * before <= after <= budget * before, prefix
    # The projections and the logit scale match no pattern: they share budget=0.9.
    rest = [r for r in p.layers if not r.name.startswith(("vision_model", "text_model"))]
    assert sum(r.params_after for r in rest) <= 0.9 * sum(r.params_before for r in rest)
    assert p.target_params is not None and p.total_params <= p.target_params


def test_one_shared_budget_covers_both_towers(clip) -> None:
    teacher, batch = clip
    p = plan(teacher, InherConfig(budget=0.4), calib=[batch])
    assert 0.98 * 0.4 <= p.ratio <= 0.4
    assert any(r.name.startswith("vision_model") for r in p.factorised)
    assert any(r.name.startswith("text_model") for r in p.factorised)


def test_budgets_config_roundtrips() -> None:
    cfg = InherConfig(budgets=TOWERS, budget=0.2)
    assert InherConfig.from_dict(cfg.to_dict()) == cfg
    assert InherConfig(budgets=TOWERS).budget == 0.25


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(budgets={"vision_model*": 1.5}), ValueError, r"budgets\['vision_model\*'\]=1.5 is not a fraction"),
    (dict(budgets={"text_model*": "half"}), TypeError, r"budgets\['text_model\*'\] must be a fraction"),
    (dict(budgets={"": 0.5}), TypeError, "non-empty fnmatch patterns"),
    (dict(budgets=[("vision_model*", 0.3)]), TypeError, "budgets must map module-name patterns"),
    (dict(budgets={"vision_model*": 0.3}, rank=8), ValueError, "cannot be combined with rank="),
])
def test_budgets_config_errors(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        InherConfig(**kwargs)


@pytest.mark.parametrize(("budgets", "match"), [
    ({"image_tower*": 0.3}, r"pattern 'image_tower\*' matches no module"),
    ({"vision_model*": 0.3, "vision_model.encoder*": 0.5}, r"matched by budgets patterns 'vision_model\*' and"),
    ({"vision_model*": 10}, r"budget of 'vision_model\*' of 10 parameters .* is unreachable"),
])
def test_budgets_plan_errors_name_the_pattern(clip, budgets, match) -> None:
    with pytest.raises(ValueError, match=match):
        plan(clip[0], InherConfig(budgets=budgets, init="svd"))


# -- contrastive distillation -------------------------------------------------------------------------
EYE = torch.eye(2)
SWAP = torch.tensor([[0.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_contrastive_kd_equals_hand_computed_value(temperature: float) -> None:
    # Student similarities I, teacher's the swapped matrix: every row (both directions) is a two-way
    # softmax with swapped logits, whose KL is (1 - 2q) / T with q = sigmoid(-1/T); times T**2.
    loss = contrastive_kd_loss((EYE, EYE), (EYE, SWAP), temperature=temperature)
    assert math.isclose(float(loss), temperature * math.tanh(0.5 / temperature), rel_tol=1e-6)


def test_contrastive_kd_mixes_info_nce_and_embedding_matching() -> None:
    kd = 2 * math.tanh(0.25)
    info_nce = math.log(1 + math.exp(-1))  # row i of I: -log(e / (e + 1))
    embed = 0.5 * (0.0 + 1.0)  # images equal; texts orthogonal (1 - cos = 1)
    loss = contrastive_kd_loss((EYE, EYE), (EYE, SWAP), temperature=2.0, alpha=0.5, embed_weight=0.2)
    assert math.isclose(float(loss), 0.5 * kd + 0.5 * info_nce + 0.2 * embed, rel_tol=1e-6)
    mse = contrastive_kd_loss((EYE, EYE), (EYE, SWAP), alpha=1.0, embed_weight=1.0, embed_loss="mse")
    assert math.isclose(float(mse), 4 * math.tanh(1 / 8) + 0.5 * 1.0, rel_tol=1e-6)


def test_contrastive_kd_reads_scales_and_clip_outputs(clip) -> None:
    scaled = DualOutput(EYE, EYE, logit_scale=torch.tensor(2.0))
    assert torch.equal(scaled.logits_per_image, 2 * EYE)
    assert float(contrastive_kd_loss(scaled, {"image_embeds": EYE, "text_embeds": 2 * EYE,
                                              "logit_scale": torch.tensor(2.0)})) == pytest.approx(0.0, abs=1e-7)
    teacher, batch = clip
    with torch.no_grad():
        out = teacher(**batch)
    assert torch.equal(dual_output(out).logits_per_image, out.logits_per_image)
    assert float(contrastive_kd_loss(out, out)) == pytest.approx(0.0, abs=1e-6)


def test_dual_output_reads_open_clip_forms() -> None:
    scale = torch.tensor(3.0)
    for out in ((EYE, SWAP, scale), {"image_features": EYE, "text_features": SWAP, "logit_scale": scale}):
        assert torch.equal(dual_output(out).logits_per_image, 3 * SWAP)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(temperature=0.0), "temperature must be positive"),
    (dict(alpha=1.5), "alpha must be in"),
    (dict(embed_loss="l1", embed_weight=1.0), "embed_loss one of"),
])
def test_contrastive_kd_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        contrastive_kd_loss((EYE, EYE), (EYE, EYE), **kwargs)
    with pytest.raises(TypeError, match="image_embeds and text_embeds"):
        contrastive_kd_loss(EYE, (EYE, EYE))
    with pytest.raises(ValueError, match="embedding matching needs"):
        contrastive_kd_loss((EYE, EYE), (torch.eye(2, 3), torch.eye(2, 3)), embed_weight=1.0)


def test_dual_metrics_hand_counted() -> None:
    # Three pairs, classes 0, 0, 1. Image 2 looks like class 0's captions: wrong at rank 1.
    image = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.2]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    m = dual_metrics(image, text, labels)
    assert list(m) == list(DUAL_METRICS)
    assert m["zero-shot-accuracy"] == pytest.approx(2 / 3)
    assert m["i2t-recall@1"] == pytest.approx(2 / 3)
    assert m["i2t-recall@5"] == 1.0
    # Caption 2 (class 1) ranks image 2 first: it is the most "class 1" of the images.
    assert m["t2i-recall@1"] == 1.0


def test_image_to_text_recall_ranks_distinct_captions() -> None:
    # Five copies of caption A (class 0), one B (class 1); image 5 (class 1) is closer to A than to B.
    text = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]])
    image = torch.tensor([[1.0, 0.0]] * 5 + [[1.0, 0.5]])
    m = dual_metrics(image, text, torch.tensor([0, 0, 0, 0, 0, 1]))
    assert m["i2t-recall@1"] == pytest.approx(5 / 6)
    assert m["i2t-recall@5"] == 1.0  # not five copies of A: B is the second distinct caption


def _pairs(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (n, 7), generator=g)
    ids[:, -1] = 2
    pixels = torch.randn(n, 3, 16, 16, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(7, dtype=torch.long), "pixel_values": pixels[i],
             "labels": labels[i]} for i in range(n)]


def test_evaluate_dual_metrics_on_clip(clip) -> None:
    loader = torch.utils.data.DataLoader(_pairs(12, seed=1), batch_size=5)
    result = evaluate(clip[0], loader, "t2i-recall@5")
    assert set(result) == {*DUAL_METRICS, "count"} and result["count"] == 12
    assert all(0 <= result[m] <= 1 for m in DUAL_METRICS)


def test_distill_contrastive_lowers_the_loss(clip, tmp_path: Path) -> None:
    teacher, _ = clip
    pairs = _pairs(8, seed=2)
    train = torch.utils.data.DataLoader(pairs, batch_size=8, shuffle=True)  # one batch: the loss is comparable
    val = torch.utils.data.DataLoader(_pairs(16, seed=3), batch_size=8)
    batch = {k: v for k, v in torch.utils.data.default_collate(pairs).items() if k != "labels"}
    student = inherit(teacher, InherConfig(budget=0.5, init="svd"), progress=False)

    def loss() -> float:
        with torch.no_grad():
            return float(contrastive_kd_loss(student.eval()(**batch), teacher(**batch), temperature=2.0))

    before = loss()
    cfg = DistillConfig(loss="contrastive", steps=12, lr=3e-3, temperature=2.0, alpha=1.0, embed_weight=0.5,
                        metric="zero-shot-accuracy", val_every=6, log_dir=str(tmp_path))
    history = distill(student, teacher, train, val, cfg)
    assert [p[0] for p in history["curve"]] == [0, 6, 12]
    assert all(0 <= p[1] <= 1 for p in history["curve"])
    assert loss() < 0.5 * before


def test_cached_teacher_embeddings_rebuild_its_similarities(clip, tmp_path: Path) -> None:
    teacher, _ = clip
    pairs = _pairs(8, seed=4)
    cached = precompute_teacher_logits(teacher, pairs, batch_size=3)
    assert cached.logits.shape == (8, 2 * 24 + 1)
    batch = {k: v for k, v in torch.utils.data.default_collate(pairs[2:7]).items() if k != "labels"}
    with torch.no_grad():
        live = teacher(**batch)
    rebuilt = DualOutput.unpack(cached.logits[2:7])
    assert torch.allclose(rebuilt.logits_per_image, live.logits_per_image, atol=1e-4)
    student = inherit(teacher, InherConfig(budget=0.5, init="svd"), progress=False)
    cfg = DistillConfig(loss="contrastive", steps=2, val_at_start=False, log_dir=str(tmp_path))
    history = distill(student, teacher, torch.utils.data.DataLoader(cached, batch_size=4), None, cfg)
    assert history["steps"] == 2 and all(math.isfinite(v) for _, v in history["train_loss"])
    with pytest.raises(ValueError, match="packed dual-encoder outputs"):
        DualOutput.unpack(torch.zeros(3, 4))


def test_distill_config_contrastive_errors() -> None:
    with pytest.raises(ValueError, match=r"DistillConfig\.loss must be one of"):
        DistillConfig(loss="clip")
    with pytest.raises(ValueError, match=r"ExperimentalDistillConfig\.embed_loss must be one of"):
        ExperimentalDistillConfig(embed_loss="l1")
    with pytest.raises(ValueError, match=r"DistillConfig\.metric must be one of"):
        DistillConfig(metric="recall@1")


# -- bench on a tiny dual-encoder preset ---------------------------------------------------------------
def test_bench_runs_a_dual_encoder_preset(clip, monkeypatch) -> None:
    from inhernet_bench import BenchConfig, run_bench
    from inhernet_bench.presets import registry

    teacher, _ = clip
    train, test = _pairs(48, seed=5), _pairs(24, seed=6)

    def data(batch_size: int = 8, **_: object):
        return (torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True),
                torch.utils.data.DataLoader(test, batch_size=12))

    calib = [{k: v for k, v in torch.utils.data.default_collate(train[:16]).items() if k != "labels"}]
    preset = registry.Preset(
        "tiny-clip", "random tiny CLIP", "zero-shot-accuracy", lambda: teacher, data, lambda n: calib,
        methods=("inhernet", "svd-kd"), distill_options={"loss": "contrastive", "embed_weight": 1.0},
    )
    monkeypatch.setitem(registry.PRESETS, preset.name, preset)
    cfg = BenchConfig(preset="tiny-clip", budget=0.5, seeds=(0,), steps=3, batch_size=8, curve_points=1,
                      progress=False)
    result = run_bench(cfg, log=lambda _: None)
    assert result["metric"] == "zero-shot-accuracy" and result["higher_is_better"]
    others = set(DUAL_METRICS) - {"zero-shot-accuracy"}
    assert set(result["teacher"]["other_metrics"]) == others
    for m in result["methods"]:
        assert set(m["other_metrics"]) == others and m["steps"] == 3
        assert [p[0] for p in m["curve"]] == [0, 3]
