"""The code's shape as the contributing guide states it: no function over 60 lines, and the library small.

Measured from the source (the ``ast`` of every module under ``src/``), so a long function fails here at once
rather than in review. The import contract (library never imports the harness, no cycles, the core's layer
order) is checked by ``lint-imports`` in ``make lint``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
MAX_FUNCTION_LINES = 60
# Issue 25 asks for at most 10,000 lines: the library was 15,048, then 10,530 with issue 28's exporters
# (deploy/hf, hf_modeling, pt2, gguf with its tokenizer, and the export command: 532 lines), and is 10,418
# since the trim branch removed a re-export shim, hand-written hook removal and mode restoring (now hooked()
# and evaluating()), a second int/number check, the harness-only first_example (now in inhernet_bench),
# one-parameter-a-line signatures and conversions done twice (10,426 with the features since), and is 10,300
# since calibration="sequential-corrected" (an ablation that lost: PairedCovariance, corrected_weight and the
# teacher path of sequential calibration) went and a few helpers were simplified; still 300 over. It is 9,995
# since the gate variants that lost every measurement (top-1 routing, per-position conv gates, gate_lr_scale and
# configure_gates) went: 10,096 before, so within issue 25's 10,000.
# A ratchet at today's size, to be lowered as the library shrinks; raise it only for a new feature, and say so here.
MAX_LIBRARY_LINES = 9_995


def _functions(path: Path) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function and method defined in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((f"{prefix}{child.name}", child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


@pytest.mark.parametrize("package", ["inhernet", "inhernet_bench"])
def test_no_function_is_longer_than_60_lines(package):
    long = [
        f"{path.relative_to(SRC)}:{name} ({lines} lines)"
        for path in sorted((SRC / package).rglob("*.py"))
        for name, lines in _functions(path)
        if lines > MAX_FUNCTION_LINES
    ]
    assert not long, "split these into named steps:\n" + "\n".join(long)


def test_the_library_stays_small():
    lines = sum(len(path.read_text(encoding="utf-8").splitlines()) for path in (SRC / "inhernet").rglob("*.py"))
    assert lines <= MAX_LIBRARY_LINES, f"src/inhernet has {lines:,} lines (at most {MAX_LIBRARY_LINES:,})"


def test_the_measure_sees_a_long_function(tmp_path):
    """The check itself can fail: a 61-line function is reported with its length."""
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "m.py").write_text(f"class C:\n  def f(self):\n{body}\n")
    assert ("C.f", 61) in _functions(tmp_path / "m.py")
