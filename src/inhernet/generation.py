"""Greedy continuations of fixed prompts: what a language-model user looks at first after compression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .batches import device_of, evaluating, logits_of

__all__ = ["greedy_continuations"]


@torch.no_grad()
def greedy_continuations(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 20
) -> list[str]:
    """The greedy (argmax) continuation of each prompt, decoded without the prompt.

    Prompts run one at a time (no padding); Hugging Face's ``generate`` is used where the model has it.

    Raises:
        ValueError: no prompts, an empty prompt or ``max_new_tokens < 1``.
    """
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError(f"prompts must be non-empty strings, got {list(prompts)!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    device = device_of(model)
    out = []
    with evaluating(model):
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
            if hasattr(model, "generate"):
                full = model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            else:
                full = ids
                for _ in range(max_new_tokens):
                    next_id = logits_of(model(full))[:, -1].argmax(-1, keepdim=True)
                    full = torch.cat([full, next_id], dim=1)
            out.append(tokenizer.decode(full[0, ids.shape[1]:], skip_special_tokens=True))
    return out
