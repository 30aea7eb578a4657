"""The SmolLM2 student's GGUF file run in llama.cpp: the same tokens, logits and greedy text as the student.

    OMP_NUM_THREADS=2 python -m inhernet_bench.scripts.gguf_check [--budget 0.8] [--articles 20] [--blocks 8]

Needs ``llama-cpp-python`` (it compiles llama.cpp: ``pip install llama-cpp-python``), which the project does not
install. The student is the default ``inherit`` of SmolLM2-135M at ``--budget`` (whole blocks dropped, rank cuts
densified by the export), calibrated on BBC training blocks and not trained: the check is of the file, not of
the student's quality. On BBC test articles it compares llama.cpp's tokenisation with the tokenizer's, the
perplexity and logits of ``--blocks`` test blocks, and 32 greedy tokens from one prompt. Writes
``gguf-check.json`` and ``gguf-check.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inhernet._atomic import atomic_write
from inhernet_bench.scripts import RESULTS, shown

PROMPT = "Shares in the bank rose sharply on Monday after"


def _llama_cpp_scores(llm: Any, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def _nll(logits: np.ndarray, ids: list[int]) -> float:
    """Summed next-token negative log-likelihood of ``ids`` under ``logits`` (one row per position)."""
    shifted = logits[:-1] - logits[:-1].max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(ids) - 1), ids[1:]].sum())


def compare(student: Any, tokenizer: Any, llm: Any, articles: list[str], blocks: torch.Tensor) -> dict[str, Any]:
    """Tokenisation agreement, perplexity and logit difference on ``blocks``, greedy tokens from :data:`PROMPT`."""
    same = sum(llm.tokenize(text.encode(), add_bos=False, special=False)
               == tokenizer(text, add_special_tokens=False)["input_ids"] for text in articles)
    nll = {"student": 0.0, "llama.cpp": 0.0}
    worst = 0.0
    for block in blocks:
        ids = block.tolist()
        with torch.no_grad():
            want = student(block[None]).logits[0].double().numpy()
        got = _llama_cpp_scores(llm, ids)
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
        nll["student"] += _nll(want, ids)
        nll["llama.cpp"] += _nll(got, ids)
    tokens = blocks.shape[0] * (blocks.shape[1] - 1)
    prompt = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        greedy = student.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt):].tolist()
    llm.reset()
    cpp = list(itertools.islice(llm.generate(prompt, temp=0.0, top_k=1, reset=True), len(greedy)))
    return {
        "articles": len(articles), "articles_tokenised_alike": same,
        "blocks": list(blocks.shape), "perplexity": {k: math.exp(v / tokens) for k, v in nll.items()},
        "max_relative_logit_difference": worst,
        "greedy_tokens_alike": sum(a == b for a, b in zip(greedy, cpp, strict=True)), "greedy_tokens": len(greedy),
        "greedy_text": {"student": tokenizer.decode(greedy), "llama.cpp": tokenizer.decode(cpp)},
    }


def markdown(report: dict[str, Any]) -> str:
    ppl = report["perplexity"]
    return "\n".join([
        f"Command: `{report['command']}`", "",
        "| check | student (PyTorch) | GGUF in llama.cpp |", "|---|---|---|",
        f"| BBC test articles tokenised alike | {report['articles']} | {report['articles_tokenised_alike']} |",
        f"| perplexity, {report['blocks'][0]} test blocks of {report['blocks'][1]} tokens | {ppl['student']:.3f} | "
        f"{ppl['llama.cpp']:.3f} |",
        f"| max logit difference (relative to the largest logit) | | {report['max_relative_logit_difference']:.1e} |",
        f"| greedy tokens alike | {report['greedy_tokens']} | {report['greedy_tokens_alike']} |", "",
        f"Student: SmolLM2-135M at budget {report['budget']} ({report['params']:,} parameters, {report['layers']} "
        f"blocks), not trained; GGUF {report['gguf_mb']:.1f} MB (F32); llama-cpp-python {report['llama_cpp']}, "
        f"torch {report['torch']}.", "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=0.8)
    parser.add_argument("--articles", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("gguf_check runs the file in llama.cpp: pip install llama-cpp-python (it compiles llama.cpp)") from None

    from inhernet import InherConfig, export_gguf, inherit
    from inhernet_bench.presets.smollm2 import bbc_blocks, load_smollm2, read_bbc_articles, split_articles

    start = time.perf_counter()
    teacher, tokenizer = load_smollm2()
    calib = list(bbc_blocks("train", limit=64, tokenizer=tokenizer).blocks.split(8))
    student = inherit(teacher, InherConfig(budget=args.budget, seed=0), calib=calib, progress=False).eval()
    articles = [text for _, _, text in split_articles(read_bbc_articles(), "test")[: args.articles]]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_gguf(student, Path(tmp) / "student.gguf", tokenizer=tokenizer)
        llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False)
        report = compare(student, tokenizer, llm, articles,
                         bbc_blocks("test", limit=args.blocks, tokenizer=tokenizer).blocks)
        report["gguf_mb"] = path.stat().st_size / 1e6
    command = " ".join(["OMP_NUM_THREADS=2 python -m inhernet_bench.scripts.gguf_check", *(argv or sys.argv[1:])])
    report |= {"command": command, "budget": args.budget, "params": sum(p.numel() for p in student.parameters()),
               "layers": len(student.model.layers), "llama_cpp": llama_cpp.__version__, "torch": torch.__version__,
               "wall_s": round(time.perf_counter() - start, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    out = atomic_write(args.out / "gguf-check.json", json.dumps(report, indent=2) + "\n")
    atomic_write(args.out / "gguf-check.md", markdown(report))
    print(markdown(report))
    print(f"wrote {shown(out)}")


if __name__ == "__main__":
    main()
