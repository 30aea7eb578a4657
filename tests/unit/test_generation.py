"""Greedy continuations: a full-rank inherited LM continues every prompt exactly as its teacher does."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from inhernet import InherConfig, inherit
from inhernet.generation import greedy_continuations

WORDS = ["<pad>", "<unk>", "the", "cat", "sat", "on", "a", "mat", "dog", "ran", "home", "and", "slept"]


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


class Plain(torch.nn.Module):
    """A causal LM without ``generate``: the token-by-token path."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids).logits


def test_full_rank_inheritance_continues_as_the_teacher_and_both_paths_agree():
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_embd=32, n_layer=2, n_head=2, n_positions=64))
    tok, prompts = tokenizer(), ["the cat sat on", "a dog ran"]
    calib = [tok(["the cat sat on a mat", "a dog ran home and slept"], return_tensors="pt")["input_ids"]]
    student = inherit(teacher, InherConfig(rank="full", init="svd", experts=1), calib=calib)
    expected = greedy_continuations(teacher, tok, prompts, max_new_tokens=6)
    assert all(len(c.split()) == 6 for c in expected)  # words are tokens here; no EOS in the vocabulary
    assert greedy_continuations(student, tok, prompts, max_new_tokens=6) == expected
    assert greedy_continuations(Plain(teacher), tok, prompts, max_new_tokens=6) == expected
    teacher.train()
    greedy_continuations(teacher, tok, prompts[:1], max_new_tokens=1)
    assert teacher.training


@pytest.mark.parametrize(
    "prompts, steps, named", [([], 4, "prompts"), ([""], 4, "prompts"), (["the cat"], 0, "max_new_tokens")]
)
def test_bad_arguments_are_named(prompts, steps, named):
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_embd=16, n_layer=1, n_head=2, n_positions=16))
    with pytest.raises(ValueError, match=named):
        greedy_continuations(lm, tokenizer(), prompts, max_new_tokens=steps)
