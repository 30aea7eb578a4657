"""Padding-aware calibration: padded positions (attention_mask == 0) enter no statistics.

The same three sentences padded to two different lengths must give the same whitening statistics, the
same plan and the same factors, one-pass and sequential; the pad token is never counted.
"""

from __future__ import annotations

import pytest
import torch

import tiny_models as tm
from inhernet import InherBlock, InherEmbedding, inherit, plan
from inhernet.calibration import collect_covariances
from inhernet.discovery import find_layers
from inhernet.experimental import ExperimentalConfig

PAD = 0
# 60 real tokens, more than the tiny BERT's width (32), so that every covariance is well conditioned.
SENTENCES = [
    [int(t) for t in torch.randint(3, 100, (n,), generator=torch.Generator().manual_seed(n))]
    for n in (5, 7, 4, 9, 11, 6, 8, 10)
]


def padded(length: int) -> dict[str, torch.Tensor]:
    ids = torch.full((len(SENTENCES), length), PAD)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(SENTENCES):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def block_matrix(block: InherBlock) -> torch.Tensor:
    """The block's map as one dense matrix (experts=1): sign-free, unlike the factors themselves."""
    down, up = block.down.weight.detach(), block.up.weight.detach().flatten(1)
    return up @ (down.T if isinstance(block, InherEmbedding) else down.flatten(1))


def test_whitening_statistics_ignore_padding() -> None:
    teacher, _ = tm.bert_tiny()
    layers = find_layers(teacher, ExperimentalConfig()).open
    short, long = (collect_covariances(teacher, layers, [padded(n)], progress=False) for n in (12, 16))
    assert short.keys() == long.keys() and len(short) == len(layers)
    real = sum(len(s) for s in SENTENCES)
    for name, cov in short.items():
        if name.endswith("classifier") or name.endswith("pooler.dense"):
            continue  # one pooled vector per sentence: no positions to mask
        assert cov.count == long[name].count == real, name
        torch.testing.assert_close(cov.mean(), long[name].mean(), rtol=1e-5, atol=1e-6)
    assert short["bert.embeddings.word_embeddings"].total[PAD] == 0  # the pad token is never counted


@pytest.mark.parametrize("calibration", ["one-pass", "sequential"])
def test_two_paddings_give_the_same_plan_and_factors(calibration: str) -> None:
    teacher, _ = tm.bert_tiny()
    cfg = ExperimentalConfig(budget=0.5, experts=1, init="whiten", calibration=calibration)
    students = [inherit(teacher, cfg, calib=[padded(n)], progress=False) for n in (12, 16)]
    a, b = (s.inhernet_plan for s in students)
    assert a.ranks() == b.ranks() and a.total_params == b.total_params
    assert plan(teacher, cfg, calib=[padded(12)]).ranks() == a.ranks()
    blocks = [(n, m) for n, m in students[0].named_modules() if isinstance(m, InherBlock)]
    assert blocks
    for name, block in blocks:
        a, b = block_matrix(block), block_matrix(students[1].get_submodule(name))
        assert float((a - b).abs().max() / a.abs().max()) <= 1e-4, name
