"""Size on disk of each export format for the presets' default students, next to their teachers'.

    OMP_NUM_THREADS=1 python -m inhernet_bench.scripts.export_sizes [--presets mnist-cnn,...] [--budget 0.25]

Each preset's teacher is compressed as the bench's ``inhernet`` row is (the family's default recipe, whitened,
``--calib-size`` examples) but not trained: sizes do not depend on training (for the same reason a preset
whose converged teacher is not built yet uses its training's starting point, recorded as ``teacher_trained``). The teacher and the student
are then written in every format (``weights``: the teacher's safetensors state dict, the student's
``inhernet.save`` directory; ``pt2``, ``onnx``, ``gguf``, ``hf``); a format that refuses the model is recorded
with its reason. Writes ``export-sizes.json`` and its table, ``export-sizes.md``, under ``--out`` (default
``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inhernet._atomic import atomic_write
from inhernet_bench.scripts import RESULTS, shown

FORMATS = ("weights", "pt2", "onnx", "gguf", "hf")
FILE_NAMES = {"weights": "weights", "pt2": "model.pt2", "onnx": "model.onnx", "gguf": "model.gguf", "hf": "hf"}


def _writer(fmt: str, example: Any) -> Callable[[nn.Module, Path], Any]:
    """``write(model, path)`` for ``fmt``."""
    from inhernet import save
    from inhernet.deploy import export_gguf, export_hf, export_onnx, export_pt2

    def weights(model: nn.Module, path: Path) -> Any:
        from safetensors.torch import save_model

        if hasattr(model, "inhernet_plan"):
            return save(model, path)
        path.mkdir()
        return save_model(model, str(path / "model.safetensors"))

    writers = {"weights": weights, "hf": export_hf, "gguf": export_gguf,
               "pt2": lambda m, p: export_pt2(m, example, p), "onnx": lambda m, p: export_onnx(m, example, p)}
    return writers[fmt]


def size_on_disk(path: Path) -> int:
    """Bytes of the file ``path``, or of every file under the directory ``path``."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def sizes(model: nn.Module, example: Any, formats: tuple[str, ...] = FORMATS) -> dict[str, Any]:
    """``{format: bytes}`` of ``model`` written in each format, or ``{format: "n/a: why"}`` where it is refused."""
    row: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            path = Path(tmp) / FILE_NAMES[fmt]
            try:
                _writer(fmt, example)(model, path)
            except (ValueError, TypeError, ImportError) as err:
                row[fmt] = f"n/a: {str(err).splitlines()[0]}"
                continue
            row[fmt] = size_on_disk(path)
            if path.is_dir():  # a large model's formats one at a time on disk
                shutil.rmtree(path)
            else:
                path.unlink()
    return row


def _teacher(preset_name: str, preset: Any) -> tuple[nn.Module, bool]:
    """The preset's teacher and whether it is the trained one: where its converged teacher is not built yet,
    the starting point of its training (the same architecture, so the same sizes on disk)."""
    from inhernet_bench.presets.teacher_cache import TeacherMissingError
    from inhernet_bench.teachers import teacher_spec

    try:
        return preset.teacher().eval(), True
    except TeacherMissingError:
        return teacher_spec(preset_name).model().eval(), False


def measure(preset_name: str, budget: float, calib_size: int) -> dict[str, Any]:
    """The teacher's and the untrained default student's sizes in every format, for one preset."""
    from inhernet import InherConfig, inherit
    from inhernet_bench.presets.registry import get_preset

    preset = get_preset(preset_name)
    teacher, trained = _teacher(preset_name, preset)
    calib = preset.calib(calib_size)
    student = inherit(teacher, InherConfig(budget=budget, seed=0), calib=calib, progress=False).eval()
    example = calib[0]
    return {
        "teacher_trained": trained,
        "params": {"teacher": sum(p.numel() for p in teacher.parameters()),
                   "student": sum(p.numel() for p in student.parameters())},
        "teacher": sizes(teacher, example), "student": sizes(student, example),
    }


def _cell(size: Any, reasons: list[str]) -> str:
    """A size in MB, or ``n/a (k)`` where rule k (listed under the table) says why the format refused the model."""
    if isinstance(size, int):
        return f"{size / 1e6:,.2f}"
    why = re.split(r"[;:]|, got", str(size).removeprefix("n/a: "))[0]  # the rule, not the model's name
    if why not in reasons:
        reasons.append(why)
    return f"n/a ({reasons.index(why) + 1})"


def markdown(report: dict[str, Any]) -> str:
    """The report as one table: a row per preset and model, a column per format (MB on disk), refusals below."""
    formats, reasons = report["formats"], []
    lines = [f"Command: `{report['command']}`", "", "| preset | model | params | " + " | ".join(formats) + " |",
             "|---|---|---:|" + "---:|" * len(formats)]
    for name, row in report["presets"].items():
        for model in ("teacher", "student"):
            cells = " | ".join(_cell(row[model].get(fmt), reasons) for fmt in formats)
            untrained = " (untrained)" if model == "teacher" and not row.get("teacher_trained", True) else ""
            lines.append(f"| {name} | {model}{untrained} | {row['params'][model]:,} | {cells} |")
    notes = [f"({k}) {why.replace('|', '/')}" for k, why in enumerate(reasons, 1)]
    footer = f"MB = 10^6 bytes; torch {report['torch']}; (untrained): the teacher's training starting point, same shapes."
    return "\n".join([*lines, "", *(f"{note}  " for note in notes), "", footer, ""])


def main(argv: list[str] | None = None) -> None:
    from inhernet_bench.presets.registry import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names [all]")
    parser.add_argument("--budget", type=float, default=0.25, help="share of the teacher's parameters [the bench's]")
    parser.add_argument("--calib-size", type=int, default=1000, help="calibration examples [the bench's]")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = {}
    for name in args.presets.split(","):
        rows[name] = measure(name, args.budget, args.calib_size)
        print(json.dumps({name: rows[name]}), flush=True)
    command = " ".join(["python -m inhernet_bench.scripts.export_sizes", *(argv if argv is not None else sys.argv[1:])])
    report = {"command": command, "budget": args.budget, "calib_size": args.calib_size, "torch": torch.__version__,
              "formats": list(FORMATS), "presets": rows}
    path = atomic_write(args.out / "export-sizes.json", json.dumps(report, indent=2) + "\n")
    atomic_write(args.out / "export-sizes.md", markdown(report))
    print(f"wrote {shown(path)} and its table")


if __name__ == "__main__":
    main()
