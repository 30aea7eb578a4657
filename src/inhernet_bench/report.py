"""The bench result as a table, a JSON file and plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from inhernet._atomic import atomic_path, atomic_write

__all__ = ["bench_table", "excluded_text", "flat_text", "lr_text", "reach_text", "write_json", "write_plots"]


def bench_table(result: dict[str, Any]) -> Table:
    """Params, MACs, (with ``--match latency``) the deployed form's measured latency, zero-shot metric,
    final metric mean ± std, after merging the experts, ms per step, the learning rate (tuned or not),
    whether the curve flattened, and when it reached the kd-student's final value (on the curve split)."""
    metric = result["metric"]
    t = result["teacher"]
    seeds = len(result["methods"][0]["seeds"]) if result["methods"] else 0
    timed = "latency_ms" in t
    table = Table(
        "method", "params", "MACs", *(["latency ms (deployed)"] if timed else []), f"zero-shot {metric}",
        f"final {metric}", "experts merged", "ms/step", "lr", "flat", "reaches kd-student",
        title=f"{result['preset']} at {_budget_text(result)} ({seeds} seeds, {result.get('steps', '?')} steps)",
        caption=excluded_text(result) or None,
    )
    latency = [f"{t['latency_ms']:.3f}"] if timed else []
    table.add_row("teacher", f"{t['params']:,}", f"{t['macs']:,}", *latency, "", f"{t['metric']:.4f}", "", "", "", "", "")
    for m in result["methods"]:
        latency = [f"{m['latency_ms']:.3f} ({m['latency_ms'] / t['latency_ms']:.0%})"] if timed else []
        table.add_row(
            m["name"], f"{m['params']:,} ({m['params'] / t['params']:.0%})",
            f"{m['macs']:,} ({m['macs'] / max(t['macs'], 1):.0%})", *latency, f"{m['zero_shot']:.4f}",
            f"{m['metric_mean']:.4f} ± {m['metric_std']:.4f}",
            f"{m['merged_mean']:.4f}" if "merged_mean" in m else "", f"{m['sec_per_step'] * 1000:.1f}",
            lr_text(m), flat_text(m), reach_text(m),
        )
    return table


def lr_text(method: dict[str, Any]) -> str:
    """The learning rate, with ``*`` when it was tuned (then the grid's validation scores follow, in the
    grid's order)."""
    lr = method.get("lr")
    if lr is None:
        return ""
    scores = method.get("lr_scores")
    if not scores:
        return f"{lr:g}"
    return f"{lr:g}* (" + " / ".join(f"{v:.4f}" for v in scores.values()) + ")"


def flat_text(method: dict[str, Any]) -> str:
    """``yes``/``no`` (with the spread of the last 20% of the curve), or empty when unknown."""
    if method.get("flattened") is None:
        return ""
    return f"{'yes' if method['flattened'] else 'no'} ({method['flat_spread']:.4f})"


def reach_text(method: dict[str, Any]) -> str:
    """The step at which the curve first reached the kd-student's final value, and its share of the steps."""
    if "steps_to_reach" not in method:
        return ""
    if method["steps_to_reach"] is None:
        return "never"
    return f"{method['steps_to_reach']} ({method['steps_to_reach_fraction']:.0%})"


def excluded_text(result: dict[str, Any]) -> str:
    """The methods the preset leaves out, with the reasons."""
    return "; ".join(f"{name} left out: {why}" for name, why in result.get("excluded", {}).items())


def _budget_text(result: dict[str, Any]) -> str:
    unit = {"macs": "MACs", "latency": "measured latency"}.get(result.get("match", "params"), "params")
    sized = f", the baselines sized from {result['reference']}" if result.get("reference") else ""
    return f"budget {result['budget']} of the teacher's {unit}{sized}"


def write_json(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``result`` atomically."""
    return atomic_write(path, json.dumps(result, indent=2) + "\n")


def write_plots(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """A PNG: final metric against parameters (left) and the learning curves (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    t = result["teacher"]
    left.axhline(t["metric"], color="black", linestyle="--", linewidth=1, label=f"teacher ({t['params']:,})")
    for m in result["methods"]:
        left.errorbar(m["params"], m["metric_mean"], yerr=m["metric_std"], fmt="o", capsize=3, label=m["name"])
        steps, values = zip(*m["curve"], strict=True) if m["curve"] else ((), ())
        right.plot(steps, values, marker=".", label=m["name"])
    left.set(xlabel="parameters", ylabel=f"final {metric}", title="final metric vs parameters")
    right.set(xlabel="step", ylabel=f"{metric} (curve split)", title="learning curves (mean over seeds)")
    if metric == "perplexity":
        left.set_yscale("log")
        right.set_yscale("log")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(f"{result['preset']}, budget {result['budget']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


