"""The presets' converged teachers, built by ``inhernet-bench teacher --preset NAME``.

Each preset with a teacher to train defines ``teacher_spec()`` in its module (a
:class:`~inhernet_bench.presets.teacher_cache.TeacherSpec`); :func:`build_preset_teacher` runs
:func:`~inhernet_bench.presets.teacher_cache.build_teacher` on it and, once the teacher is done, copies its
record (recipe, command, wall time, steps, validation and test scores) to ``record_dir/NAME.json``.
"""

from __future__ import annotations

import importlib
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inhernet._atomic import atomic_write
from inhernet_bench.presets.teacher_cache import TeacherSpec, build_teacher

__all__ = ["TEACHERS", "build_preset_teacher", "teacher_spec"]

#: the presets with a converged teacher: their module of :mod:`inhernet_bench.presets`, which defines ``teacher_spec()``
TEACHERS = {"fashion-effnet": "fashion", "tweets-minilm": "tweets_teacher", "fashion-dual": "fashion_dual",
            "smollm2-bbc": "smollm2"}


def teacher_spec(preset: str) -> TeacherSpec:
    """The :class:`TeacherSpec` of ``preset`` (one of :data:`TEACHERS`)."""
    if preset not in TEACHERS:
        raise ValueError(f"preset {preset!r} has no teacher to build; presets with one: {', '.join(TEACHERS)}")
    return importlib.import_module(f"inhernet_bench.presets.{TEACHERS[preset]}").teacher_spec()


def build_preset_teacher(
    preset: str, *, max_minutes: float | None = None, record_dir: str | Path = "benchmarks/results/teachers",
    device: str = "cpu", log: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Build (or continue building) ``preset``'s teacher; its record once done (also written to
    ``record_dir/<preset>.json``), ``None`` when this part ended first."""
    command = shlex.join(["inhernet-bench", "teacher", "--preset", preset])
    record = build_teacher(teacher_spec(preset), max_minutes=max_minutes, command=command, device=device, log=log)
    if record is not None:
        out = Path(record_dir) / f"{preset}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(record, indent=2, sort_keys=True) + "\n")
        log(f"{preset} teacher done; its record is in {out}")
    return record
