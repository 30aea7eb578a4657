"""A benchmark's finished runs kept on disk, one JSON file each, so a rerun (e.g. next session) skips them;
an interrupted run's checkpoints beside them, so a rerun continues it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inhernet._atomic import atomic_write

__all__ = ["Parts", "as_today"]

#: InherConfig keys that parts written before their knobs were removed still record, at the one value today's
#: code runs (the gate variants, removed after they lost): such a part was made exactly as today's would be
RETIRED = {"routing": "soft", "gate_pool": "mean"}


def as_today(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """``fingerprint`` without the :data:`RETIRED` keys of its recipe's config where they hold today's value."""
    config = fingerprint.get("recipe", {}).get("config")
    if not isinstance(config, dict):
        return fingerprint
    config = {k: v for k, v in config.items() if RETIRED.get(k, object()) != v}
    return {**fingerprint, "recipe": {**fingerprint["recipe"], "config": config}}


class Parts:
    """One JSON file per finished (method, seed) run and per method's tuning, under ``directory``.

    Each file records the fingerprint of the configuration and the method's recipe it was made
    with; a part is reused only when both match, and a mismatch is an error (delete the part, or
    use another directory) rather than a silent mix of two configurations.
    """

    def __init__(self, directory: str | os.PathLike[str], fingerprint: dict[str, Any]) -> None:
        self.dir, self.fingerprint = Path(directory), fingerprint

    def _read(self, path: Path, recipe: dict[str, Any]) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        part = json.loads(path.read_text())
        want = {**self.fingerprint, "recipe": recipe}
        got = as_today(part.get("fingerprint", {}))
        if got != want:
            keys = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            diff = "; ".join(f"{k}: part {got.get(k)!r}, now {want.get(k)!r}" for k in keys)
            if "teacher" in keys:
                diff += " (the teacher's weights differ: it was fitted elsewhere or by an older recipe)"
            raise ValueError(
                f"{path} was written under another configuration ({diff}); delete it or use another part_dir"
            )
        return part["data"]

    def _write(self, path: Path, recipe: dict[str, Any], data: dict[str, Any]) -> None:
        atomic_write(path, json.dumps({"fingerprint": {**self.fingerprint, "recipe": recipe}, "data": data}) + "\n")

    def run_path(self, name: str, seed: int) -> Path:
        return self.dir / f"{name}--seed{seed}.json"

    def tune_path(self, name: str) -> Path:
        return self.dir / f"{name}--tune.json"

    def train_dir(self, name: str, seed: int) -> Path:
        return self.dir / f"{name}--seed{seed}.train"

    def checkpoints(
        self, name: str, seed: int, recipe: dict[str, Any], lr: float, every: int, log: Callable[[str], None]
    ) -> dict[str, Any]:
        """``DistillConfig`` options that checkpoint the run every ``every`` steps in :meth:`train_dir` and
        continue from its ``last.ckpt`` when an earlier, interrupted run of the same configuration left one."""
        directory = self.train_dir(name, seed)
        made_under = json.loads(json.dumps({**self.fingerprint, "recipe": recipe, "lr": lr}, default=str))
        stamp = directory / "fingerprint.json"
        last = directory / "checkpoints" / "last.ckpt"
        if not stamp.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write(stamp, json.dumps(made_under) + "\n")
        elif json.loads(stamp.read_text()) != made_under:
            raise ValueError(
                f"{directory} holds the checkpoints of a run under another configuration; delete it to start "
                "this run afresh"
            )
        resume = last.is_file()
        if resume:
            log(f"seed {seed} {name:<22} resuming from {last}")
        return {"log_dir": str(directory), "checkpoint_every": every, "resume": "last" if resume else None}

    def run(self, name: str, seed: int, recipe: dict[str, Any]) -> dict[str, Any] | None:
        return self._read(self.run_path(name, seed), recipe)

    def write_run(self, name: str, seed: int, recipe: dict[str, Any], run: dict[str, Any]) -> None:
        self._write(self.run_path(name, seed), recipe, run)

    def tune(self, name: str, recipe: dict[str, Any]) -> dict[str, Any] | None:
        return self._read(self.tune_path(name), recipe)

    def write_tune(self, name: str, recipe: dict[str, Any], result: dict[str, Any]) -> None:
        self._write(self.tune_path(name), recipe, result)
