"""Render bench JSON files (from `inhernet-bench bench`) as the markdown tables of BENCHMARKS.md.

    python -m inhernet_bench.scripts.bench_markdown benchmarks/results/mnist-cnn-0.1.json benchmarks/results/mnist-cnn-0.25.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inhernet_bench.report import excluded_text, flat_text, lr_text, reach_text
from inhernet_bench.summary import steps_to_reach


def _head(result: dict, timed: bool) -> list[str]:
    """The heading, the column names and the teacher's row."""
    metric, t = result["metric"], result["teacher"]
    unit = {"macs": "MACs", "latency": "measured latency"}.get(result.get("match", "params"), "params")
    sized = f", baselines sized from {result['reference']}" if result.get("reference") else ""
    return [
        f"### {result['preset']} at budget {result['budget']} of the teacher's {unit} "
        f"(h = {result.get('experts', '?')}, seeds {result['methods'][0]['seeds']}, "
        f"{result['methods'][0]['steps']} KD steps{sized})",
        "",
        f"| method | params | MACs |{' latency ms |' if timed else ''} zero-shot {metric} | final {metric} (mean ± std) "
        "| experts merged | ms/step | lr | flattened | reaches kd-student |",
        "|---|---:|---:|" + ("---:|" if timed else "") + "---:|---:|---:|---:|---|---|---:|",
        f"| teacher | {t['params']:,} | {t['macs']:,} |" + (f" {t['latency_ms']:.1f} |" if timed else "")
        + f" | {t['metric']:.4f} | | | | | |",
    ]


def _method_row(m: dict, t: dict, timed: bool) -> str:
    merged = f"{m['merged_mean']:.4f}" if "merged_mean" in m else ""
    latency = f" {m['latency_ms']:.1f} ({m['latency_ms'] / t['latency_ms']:.2f}x) |" if timed else ""
    return (
        f"| {m['name']} | {m['params']:,} ({m['params'] / t['params']:.0%}) | "
        f"{m['macs']:,} ({m['macs'] / t['macs']:.0%}) |{latency} {m['zero_shot']:.4f} | "
        f"{m['metric_mean']:.4f} ± {m['metric_std']:.4f} | {merged} | {m['sec_per_step'] * 1000:.1f} | "
        f"{lr_text(m)} | {flat_text(m)} | {reach_text(m)} |"
    )


def _tuning_note(result: dict) -> list[str]:
    """What the starred learning rates mean, where the run tuned them."""
    if not any("lr_scores" in m for m in result["methods"]):
        return []
    tuning = result.get("tuning", {})
    return ["", f"lr*: tuned on a validation split of the training data ({tuning.get('val_examples', '?')} "
            f"examples) after {tuning.get('steps', '?')} steps per value; in brackets the validation "
            f"{result['metric']} at lr = {' / '.join(f'{v:g}' for v in tuning.get('lr_grid', []))}."]


def _versus_kd_student(result: dict) -> list[str]:
    """InherNet against the kd-student: the final gap, when it reaches the student's level, the step-time ratio."""
    by_name, metric = {m["name"]: m for m in result["methods"]}, result["metric"]
    if "inhernet" not in by_name or "kd-student" not in by_name:
        return []
    inh, kd = by_name["inhernet"], by_name["kd-student"]
    if "steps_to_reach" in inh:  # like for like: against the kd-student's last point on the curve split
        reach, against = inh["steps_to_reach"], "its last curve point"
    else:  # older files: against its final metric on the whole test split
        reach = steps_to_reach(inh["curve"], kd["metric_mean"], result["higher_is_better"])
        against = f"its final {metric}"
    when = (
        f"never reaches kd-student's level on the curve split ({against})"
        if reach is None
        else f"reaches kd-student's level ({against}) at step {reach} of {inh['steps']} "
        f"({reach / inh['steps']:.0%} of the steps, curve split)"
    )
    points = metric.endswith("accuracy")
    if result["higher_is_better"]:
        gap = (inh["metric_mean"] - kd["metric_mean"]) * (100 if points else 1)
        versus = f"InherNet − kd-student: {gap:+.2f} {'points' if points else metric}"
    else:  # perplexity: a ratio reads better than a difference, lower is better
        versus = f"InherNet / kd-student {metric}: {inh['metric_mean'] / kd['metric_mean']:.3f}x (lower is better)"
    return ["", f"{versus}; InherNet {when}; step time {inh['sec_per_step'] / kd['sec_per_step']:.2f}x kd-student's."]


def _other_metrics(result: dict) -> list[str]:
    """A dual encoder's retrieval recalls, final, mean over seeds."""
    t = result["teacher"]
    others = list(t.get("other_metrics", {}))
    if not others:
        return []
    lines = ["", "| method | " + " | ".join(others) + " |", "|---|" + "---:|" * len(others)]
    for name, values in [("teacher", t["other_metrics"])] + [
        (m["name"], m.get("other_metrics", {})) for m in result["methods"]
    ]:
        lines.append(f"| {name} | " + " | ".join(f"{values.get(k, float('nan')):.4f}" for k in others) + " |")
    return lines


def render(result: dict) -> str:
    """The markdown table of one bench JSON, with its notes and the machine it ran on."""
    t = result["teacher"]
    timed = "latency_ms" in t  # --match latency: each model's deployed form, measured (ms on the first calib batch)
    lines = _head(result, timed) + [_method_row(m, t, timed) for m in result["methods"]]
    if excluded_text(result):
        lines += ["", excluded_text(result) + "."]
    lines += _tuning_note(result) + _versus_kd_student(result) + _other_metrics(result)
    lines += ["", f"Device {result['device']}, torch {result['torch']}, {result.get('machine', '')}, "
              f"wall {result['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    print("\n".join(render(json.loads(f.read_text())) for f in args.files))


if __name__ == "__main__":
    main()
