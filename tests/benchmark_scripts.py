"""Import a benchmark script of ``inhernet_bench.scripts`` as a module, for the tests of its pieces."""

from __future__ import annotations

import importlib
from types import ModuleType


def load_benchmark(stem: str) -> ModuleType:
    """``inhernet_bench.scripts.<stem>``."""
    return importlib.import_module(f"inhernet_bench.scripts.{stem}")
