"""The core flows one way: configure -> find layers -> measure -> allocate -> build, with no import cycle.

Reads each core module's relative imports (lazy ones inside functions included) from its source and
checks that the graph is acyclic and that no core module reaches into ``baselines``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import inhernet

ROOT = Path(inhernet.__file__).parent
CORE = [
    "config", "kinds", "layers", "views", "batches", "decomposition", "stack", "discovery", "readers", "calibration",
    "pruning", "autoprune", "blockdrop",
    "sequential", "spectra", "allocation", "plan", "surgery", "pipeline", "serialization",
]


def imports_of(module: str) -> set[str]:
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    return {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
    }


def test_core_import_graph_is_acyclic_and_one_way() -> None:
    graph = {m: imports_of(m) for m in CORE}
    assert all("baselines" not in deps for deps in graph.values()), graph
    done: set[str] = set()

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert m not in path, f"import cycle: {' -> '.join((*path, m))}"
        if m in done or m not in graph:
            return
        for dep in graph[m]:
            visit(dep, (*path, m))
        done.add(m)

    for m in CORE:
        visit(m, ())
    # The steps in order: each reads only from the steps before it.
    steps = ["config", "discovery", "spectra", "plan", "allocation", "surgery", "pipeline"]
    for i, m in enumerate(steps):
        assert not graph[m] & set(steps[i + 1:]), f"{m} imports a later step: {graph[m] & set(steps[i + 1:])}"
