"""evaluate(): accuracy and perplexity against hand-computed values, for every batch/output form."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from inhernet import evaluate


class Passthrough(nn.Module):
    """Its input *is* the logits; ``wrap`` returns them in an object with ``.logits`` (HF style)."""

    def __init__(self, wrap: bool = False) -> None:
        super().__init__()
        self.wrap = wrap
        self.unused = nn.Parameter(torch.zeros(1))  # evaluate reads the device from the parameters

    def forward(self, x: torch.Tensor | None = None, input_ids: torch.Tensor | None = None):
        logits = x if x is not None else input_ids
        return SimpleNamespace(logits=logits) if self.wrap else logits


def _logits(argmax: list[int], classes: int = 3) -> torch.Tensor:
    out = torch.randn(len(argmax), classes) * 0.1
    out[torch.arange(len(argmax)), torch.tensor(argmax)] = 5.0
    return out


# Batch 1: predictions 0 1 2 0 vs labels 0 1 1 0 (3 right); batch 2: 2 2 vs 2 0 (1 right) -> 4/6.
BATCHES = [(_logits([0, 1, 2, 0]), torch.tensor([0, 1, 1, 0])), (_logits([2, 2]), torch.tensor([2, 0]))]


@pytest.mark.parametrize("form", ["tuple", "list", "dict"])
@pytest.mark.parametrize("wrap", [False, True])
def test_accuracy_equals_hand_count(form: str, wrap: bool) -> None:
    if form == "dict":
        loader = [{"input_ids": x, "labels": y} for x, y in BATCHES]
    else:
        loader = [(x, y) if form == "tuple" else [x, y] for x, y in BATCHES]
    model = Passthrough(wrap).train()
    result = evaluate(model, loader, metric="accuracy")
    assert result == {"accuracy": pytest.approx(4 / 6), "count": 6.0}
    assert model.training, "the previous mode is restored"


def test_accuracy_max_batches() -> None:
    result = evaluate(Passthrough(), BATCHES, max_batches=1)
    assert result["accuracy"] == pytest.approx(3 / 4) and result["count"] == 4


class Uniform(nn.Module):
    """A language model that predicts uniform logits over ``vocab`` tokens."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.unused)


@pytest.mark.parametrize("vocab", [2, 17, 1000])
def test_perplexity_of_uniform_model_is_vocab_size(vocab: int) -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 9), generator=g)
    labels = ids.clone()
    labels[0, 5:] = -100  # ignored positions do not count
    loader = [{"input_ids": ids, "labels": labels}, {"input_ids": ids[:1]}]  # 2nd: labels from input_ids
    result = evaluate(Uniform(vocab), loader, metric="perplexity")
    assert result["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert result["count"] == (3 * 8 - 4) + 8


def test_perplexity_respects_attention_mask() -> None:
    ids = torch.randint(0, 10, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    result = evaluate(Uniform(10), [{"input_ids": ids, "attention_mask": mask}], metric="perplexity")
    assert result["count"] == 5 + 2
    assert result["perplexity"] == pytest.approx(10, rel=1e-5)


def test_perplexity_equals_hand_computed_value() -> None:
    # One sequence of 3 tokens over a vocabulary of 2: the model gives fixed logits per position.
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [9.0, 9.0]]])
    labels = torch.tensor([[0, 1, 0]])  # predicted: position 0 -> token 1, position 1 -> token 0

    class Fixed(nn.Module):
        def forward(self, input_ids):
            return logits

    nll = -math.log(math.e / (1 + math.e)) - math.log(math.e**2 / (math.e**2 + 1))
    result = evaluate(Fixed(), [{"input_ids": labels, "labels": labels}], metric="perplexity")
    assert result["perplexity"] == pytest.approx(math.exp(nll / 2), rel=1e-6)
    assert result["count"] == 2


def test_evaluating_lends_eval_mode_and_gives_each_module_its_own_back() -> None:
    """``evaluating`` (what evaluate, export and the teacher precomputation use): eval mode inside, every
    module's own flag after, also on error; ``device_of`` is where the inputs go (the CPU without parameters)."""
    from inhernet.batches import device_of, evaluating

    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 3)).train()
    model[0].eval()  # a frozen part of a training model
    before = [m.training for m in model.modules()]
    with evaluating(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError, match="boom"), evaluating(model):
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before
    evaluate(model, [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))])
    assert [m.training for m in model.modules()] == before
    assert device_of(model) == torch.device("cpu") and device_of(nn.ReLU()) == torch.device("cpu")
