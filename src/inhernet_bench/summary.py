"""Per-method summaries of a benchmark's runs: means over seeds, the learning curve and its flatness."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = [
    "FLAT_POINTS", "FLAT_WINDOW", "compare_with_student", "flatness", "other_metrics", "steps_to_reach", "summarise",
]


def summarise(name: str, runs: list[dict[str, Any]], size: tuple[int, int], higher: bool = True) -> dict[str, Any]:
    """One method's row of the contract JSON from its runs (one per seed); ``size`` is (params, MACs)."""
    finals = [r["final"] for r in runs]
    curves = [dict(map(tuple, r["curve"])) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    merged = {"merged_mean": statistics.fmean(r["merged"] for r in runs)} if "merged" in runs[0] else {}
    curve = [[s, statistics.fmean(c[s] for c in curves)] for s in steps]
    tuned = {"lr_scores": runs[0]["lr_scores"]} if "lr_scores" in runs[0] else {}
    return {
        "name": name, "params": size[0], "macs": size[1],
        "zero_shot": statistics.fmean(r["zero_shot"] for r in runs),
        "metric_mean": statistics.fmean(finals),
        "metric_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "seeds": [r["seed"] for r in runs], "steps": runs[0]["steps"],
        "sec_per_step": statistics.median(r["sec_per_step"] for r in runs),
        "lr": runs[0].get("lr"), **tuned,
        "curve": curve, **flatness(curve, runs[0]["steps"], higher),
        **merged,
        "per_seed": [{**{k: r[k] for k in ("seed", "zero_shot", "final", "merged", "lr") if k in r},
                      **({"curve_end": r["curve"][-1][1]} if r["curve"] else {})} for r in runs],
        **other_metrics({k: statistics.fmean(r["metrics"][k] for r in runs) for k in runs[0]["metrics"]}),
    }


#: a curve has flattened when its last 20% of steps stay within 0.2 points (accuracy) or 0.2% (perplexity)
FLAT_WINDOW, FLAT_POINTS = 0.2, 0.002


def flatness(curve: Sequence[Sequence[float]], steps: int, higher: bool = True) -> dict[str, Any]:
    """``{"flattened": bool | None, "flat_spread": float | None}``: the spread (max - min) of the
    curve over its last ``FLAT_WINDOW`` of the steps, and whether it is within ``FLAT_POINTS``
    (relative to the last value for a perplexity). ``None`` when fewer than two points fall there."""
    window = [v for s, v in curve if s >= (1 - FLAT_WINDOW) * steps]
    if len(window) < 2:
        return {"flattened": None, "flat_spread": None}
    spread = max(window) - min(window)
    tolerance = FLAT_POINTS if higher else FLAT_POINTS * abs(window[-1])
    return {"flattened": spread <= tolerance, "flat_spread": spread}


def steps_to_reach(curve: Sequence[Sequence[float]], target: float, higher: bool = True) -> int | None:
    """The first step of ``curve`` at which it reaches ``target`` (``None``: never)."""
    for step, value in curve:
        if (value >= target) if higher else (value <= target):
            return int(step)
    return None


def compare_with_student(summaries: list[dict[str, Any]], higher: bool) -> None:
    """Each method's ``steps_to_reach``: the first step its curve reaches the kd-student's final value on
    the same (curve) split, and that as a share of its steps."""
    student = next((m for m in summaries if m["name"] == "kd-student"), None)
    if student is None or not student["curve"]:
        return
    target = student["curve"][-1][1]
    for m in summaries:
        if m is student:
            continue
        reach = steps_to_reach(m["curve"], target, higher)
        m["steps_to_reach"] = reach
        m["steps_to_reach_fraction"] = None if reach is None else reach / max(1, m["steps"])


def other_metrics(metrics: dict[str, float]) -> dict[str, Any]:
    """``{"other_metrics": ...}`` when there are any, so other presets' JSON keeps its shape."""
    return {"other_metrics": metrics} if metrics else {}
