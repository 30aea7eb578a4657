"""Dual encoders: Hugging Face ``CLIPModel`` inherits as-is, both towers at once, with per-tower budgets."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from inhernet import InherBlock, InherConfig, inherit, load, plan, save

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


def test_clip_embeddings_whose_weight_is_read_stay_dense(clip) -> None:
    rows = {r.name: r for r in plan(clip[0], InherConfig(rank="full", init="svd")).layers}
    for name in ("vision_model.embeddings.patch_embedding", "vision_model.embeddings.position_embedding",
                 "text_model.embeddings.position_embedding"):
        assert rows[name].rank is None and "read directly" in rows[name].reason
    assert rows["text_model.embeddings.token_embedding"].rank is not None


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
