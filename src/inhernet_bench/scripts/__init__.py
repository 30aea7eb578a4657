"""The scripts behind BENCHMARKS.md, each run as ``python -m inhernet_bench.scripts.NAME`` from a source
checkout; by default they write under the repository's ``benchmarks/results/``, wherever they are run from."""

from __future__ import annotations

import os
from pathlib import Path

#: the repository's root (this file is ``src/inhernet_bench/scripts/__init__.py`` in it)
ROOT = Path(__file__).resolve().parents[3]
#: where the scripts write their results by default
RESULTS = ROOT / "benchmarks" / "results"


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` as a recorded command names it: relative to the repository where it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
