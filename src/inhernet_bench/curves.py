"""Where inheritance pays, drawn: each method's learning curve (score vs KD steps, log x, with a band of
± 1 standard error across seeds) and the steps each method needs to reach 95% / 99% of the teacher's score,
from a bench (or ``compare``) result JSON and its parts directory.

"Reach ``f`` of the teacher" means a score >= ``f * teacher`` when higher is better (accuracy) and a score
<= ``teacher / f`` when lower is (perplexity). A seed's step is the first curve point at or past the target;
the table gives the mean ± s.e. of those steps over the seeds, and "not reached" unless every seed reaches it.
The curves are measured on the result's ``curve_split`` (``"test"`` when absent), the teacher's score on the
test split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inhernet._atomic import atomic_path, atomic_write

from .stats import score
from .summary import steps_to_reach

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FRACTIONS", "Curve", "curves_figure", "load_curves", "reach_table", "target", "write_curves"]

#: the shares of the teacher's score the table counts the steps to
FRACTIONS = (0.95, 0.99)


@dataclass(frozen=True)
class Curve:
    """One method's learning curves: ``runs`` holds one ``[[step, score], ...]`` per seed, or the result's
    mean curve alone (``from_parts`` false) when the parts are not at hand."""

    name: str
    runs: tuple[tuple[tuple[int, float], ...], ...]
    from_parts: bool

    @property
    def steps(self) -> list[int]:
        """The steps every run measured."""
        return sorted(set.intersection(*(set(dict(r)) for r in self.runs)))

    def band(self) -> tuple[list[float], list[float] | None]:
        """The mean over the runs at :attr:`steps` and its standard error (``None`` with one run)."""
        runs = [dict(r) for r in self.runs]
        scores = [score([r[s] for r in runs]) for s in self.steps]
        return [c.mean for c in scores], (None if len(runs) < 2 else [c.se or 0.0 for c in scores])


def target(teacher: float, fraction: float, higher: bool) -> float:
    """The score that is ``fraction`` of the teacher's: ``fraction * teacher`` when higher is better, else
    ``teacher / fraction``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], e.g. 0.95, got {fraction!r}")
    return teacher * fraction if higher else teacher / fraction


def load_curves(
    result_path: str | os.PathLike[str], parts: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], list[Curve]]:
    """The result JSON and each method's curves: per seed from ``parts`` (default: ``../parts/<stem>`` beside
    the results folder, when it exists), else the JSON's mean curve. A part made for another preset, budget,
    match, step count, curve split or teacher is an error."""
    path = Path(result_path)
    result = json.loads(path.read_text())
    if result["methods"]:  # older results name the steps per method only
        result.setdefault("steps", result["methods"][0]["steps"])
    if parts is not None and not Path(parts).is_dir():
        raise ValueError(f"parts must be the bench run's --part-dir (a directory), got {str(parts)!r}")
    folder = Path(parts) if parts is not None else path.parent.parent / "parts" / path.stem
    return result, [_curve(m, result, folder) for m in result["methods"]]


def _curve(method: dict[str, Any], result: dict[str, Any], folder: Path) -> Curve:
    files = [folder / f"{method['name']}--seed{seed}.json" for seed in method["seeds"]]
    if not all(f.is_file() for f in files):
        return Curve(method["name"], (_points(method["curve"]),), False)
    wanted = {key: result.get(key, default) for key, default in _AGREE.items()}
    digest, runs = result["teacher"].get("digest"), []
    for file in files:
        part = json.loads(file.read_text())
        made = {**_AGREE, **part.get("fingerprint", {})}
        if any(made.get(k) != v for k, v in wanted.items()) or (digest and made.get("teacher") != digest):
            raise ValueError(f"{file} was not made by this result's run ({wanted}); pass the run's --parts")
        runs.append(_points(part["data"]["curve"]))
    return Curve(method["name"], tuple(runs), True)


#: what a part and its result must agree on, with the value a file that leaves it out means
_AGREE = {"preset": None, "budget": None, "steps": None, "match": "params", "curve_split": "test"}


def _points(curve: Sequence[Sequence[float]]) -> tuple[tuple[int, float], ...]:
    return tuple((int(s), float(v)) for s, v in curve)


def reach_table(result: dict[str, Any], curves: Sequence[Curve]) -> str:
    """The markdown table of the steps each method needs to reach :data:`FRACTIONS` of the teacher's score."""
    teacher, higher = result["teacher"]["metric"], result.get("higher_is_better", True)
    sign = ">=" if higher else "<="
    heads = [f"steps to {f:.0%} ({sign} {target(teacher, f, higher):.4f})" for f in FRACTIONS]
    lines = [
        f"{result['preset']} at budget {result['budget']}: teacher {result['metric']} {teacher:.4f} (test); curves on "
        f"the {_split(result)} split, {result['steps']:,} KD steps; a step is the first curve point at or past the "
        "target (mean ± s.e. over seeds).",
        "",
        "| method | curves | at step 0 | " + " | ".join(heads) + " |",
        "| --- | --- | --- |" + " --- |" * len(heads),
    ]
    for c in curves:
        kind = f"{len(c.runs)} seed{'s' * (len(c.runs) > 1)}" if c.from_parts else "mean curve (no parts)"
        cells = [_reach_cell(c, target(teacher, f, higher), higher) for f in FRACTIONS]
        start = f"{c.band()[0][0]:.4f}" if c.steps[:1] == [0] else ""
        lines.append(f"| {c.name} | {kind} | {start} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _reach_cell(curve: Curve, goal: float, higher: bool) -> str:
    steps = [steps_to_reach(run, goal, higher) for run in curve.runs]
    reached = [s for s in steps if s is not None]
    if len(reached) < len(steps):
        return "not reached" + (f" ({len(reached)}/{len(steps)} seeds)" if reached else "")
    if len(reached) == 1:
        return f"{reached[0]:,}"
    mean = score([float(s) for s in reached])
    return f"{mean.mean:,.0f} ± {mean.se or 0.0:,.0f}"


def _split(result: dict[str, Any]) -> str:
    return str(result.get("curve_split", "test"))


def curves_figure(result: dict[str, Any], curves: Sequence[Curve]) -> Figure:
    """Score vs KD steps for every method (symmetric log x from 0, so step 0, the zero-shot score, stays on
    it), ± 1 s.e. bands where a method has two seeds or more, the teacher's score and its 95% / 99% targets:
    the whole range (left) and the range from the 95% target to the best score (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher, higher, metric = result["teacher"]["metric"], result.get("higher_is_better", True), result["metric"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    positive = [s for c in curves for s in c.steps if s > 0]
    for ax, title in zip(axes, ("all", "near the teacher"), strict=True):
        for c in curves:
            mean, se = c.band()
            line = ax.plot(c.steps, mean, marker=".", label=c.name)[0]
            if se is not None:
                low, high = zip(*((m - e, m + e) for m, e in zip(mean, se, strict=True)), strict=True)
                ax.fill_between(c.steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(teacher, color="black", linestyle="--", linewidth=1, label="teacher (test)")
        for f, style in zip(FRACTIONS, (":", "-."), strict=True):
            ax.axhline(target(teacher, f, higher), color="grey", linestyle=style, linewidth=0.8, label=f"{f:.0%} of teacher")
        ax.set_xscale("symlog", linthresh=min(positive, default=1))
        ax.set_xlim(left=0)
        if metric == "perplexity":
            ax.set_yscale("log")
        ax.set(xlabel="KD steps (log)", ylabel=f"{metric} ({_split(result)} split)", title=title)
    axes[1].set_ylim(*_near(teacher, higher, [v for c in curves for v in c.band()[0]]))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['preset']}, budget {result['budget']}: mean ± s.e. over seeds")
    fig.tight_layout()
    return fig


def _near(teacher: float, higher: bool, values: list[float]) -> tuple[float, float]:
    """The score range from the 95% target to the best of the teacher and ``values``, padded by a tenth."""
    edge = target(teacher, FRACTIONS[0], higher)
    best = max([teacher, *values]) if higher else min([teacher, *values])
    low, high = sorted((edge, best))
    pad = (high - low) / 10 or abs(teacher) / 100 or 1.0
    return low - pad, high + pad


def write_curves(
    result_path: str | os.PathLike[str], out: str | os.PathLike[str], parts: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """Write ``<stem>-curves.png`` and ``<stem>-curves.md`` (the :func:`reach_table`) under ``out``."""
    import matplotlib.pyplot as plt

    result, curves = load_curves(result_path, parts)
    # not with_suffix: a stem such as "mnist-cnn-0.1-5ep" has a dot of its own
    png, table = (Path(out) / f"{Path(result_path).stem}-curves.{ext}" for ext in ("png", "md"))
    fig = curves_figure(result, curves)
    with atomic_path(png) as tmp:
        # no software/date stamp: the same result draws the same bytes
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": None})
    plt.close(fig)
    return png, atomic_write(table, reach_table(result, curves))
