"""inhernet_bench.benchmarks_md: BENCHMARKS.md is what the committed results render, nothing typed by hand."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from inhernet_bench import benchmarks_md
from inhernet_bench.stats import score, verdict

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
COMMITTED = (ROOT / "BENCHMARKS.md").read_text()


def table_starts(lines: list[str]) -> list[int]:
    """The index of each markdown table's first line."""
    return [i for i, line in enumerate(lines) if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))]


def summary_cells(title: str, label: str) -> dict[str, str]:
    """The cells of the summary row that starts with ``label``, under the summary table ``title``, by column."""
    lines = COMMITTED.splitlines()
    start = next(i for i in table_starts(lines) if i > lines.index(f"### {title}"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    row = next(line for line in lines[start:] if line.startswith(f"| {label}"))
    return dict(zip(header, (c.strip().strip("*") for c in row.strip("|").split("|")), strict=True))


def methods_of(name: str) -> tuple[dict, dict[str, dict]]:
    result = json.loads((RESULTS / name).read_text())
    return result, {m["name"]: m for m in result["methods"]}


def test_the_committed_benchmarks_md_is_what_the_results_render():
    assert benchmarks_md.render(ROOT) == COMMITTED, "run `python -m inhernet_bench.benchmarks_md` and commit"
    assert benchmarks_md.main(["--check"]) == 0


def test_benchmarks_md_stays_under_six_thousand_words():
    assert len(COMMITTED.split()) <= 6000  # what `wc -w` counts: runs of non-whitespace


def test_every_table_is_headed_by_the_command_that_made_it_in_todays_spelling():
    lines = COMMITTED.splitlines()
    starts = table_starts(lines)
    assert len(starts) >= 20
    for start in starts:  # between the table and the heading it sits under (a run's tables share one command)
        heading = max(i for i in range(start) if lines[i].startswith("#"))
        between = lines[heading:start]
        assert "```bash" in between, f"the table at line {start + 1} has no command block above it"
        block = between[between.index("```bash") + 1:]
        commands = block[: block.index("```")]
        assert commands and all(c.strip() for c in commands), f"empty command block above line {start + 1}"
        for command in commands:
            assert "python benchmarks/" not in command and "inhernet bench " not in command, command


def test_summary_numbers_are_the_jsons():
    result, by_name = methods_of("fashion-effnet-0.1-2000.json")
    cells = summary_cells("At a parameter or MAC budget", "fashion-effnet, 10% params")
    teacher = result["teacher"]
    kd = by_name["kd-student"]
    se = score([run["final"] for run in kd["per_seed"]], 10_000).se  # the 10,000 test images (sections.toml)
    assert cells["kd-student"] == (f"{kd['metric_mean'] * 100:.2f}±{se * 100:.2f}% ({kd['params'] / teacher['params']:.0%}, "
                                   f"{kd['macs'] / teacher['macs']:.0%})")
    assert cells["teacher"] == f"{teacher['metric'] * 100:.2f}%"
    assert cells["best"] == "tie"  # prune-kd's 88.83% is within 2 s.e. of the hybrid's 88.03%
    assert cells["inhernet"].startswith(f"{by_name['inhernet']['metric_mean'] * 100:.2f}±")

    _, by_name = methods_of("smollm2-kd-1000-0.8/smollm2-bbc-0.8.json")
    cells = summary_cells("At a parameter or MAC budget", "smollm2-bbc, 80% params |")
    assert cells["inhernet"].startswith(f"{by_name['inhernet']['metric_mean']:.2f} (")  # one seed: no s.e.
    assert cells["best"] == "tie"  # one seed of a perplexity measures no noise


def test_best_names_a_method_only_beyond_two_standard_errors():
    """fashion-dual: InherNet's 67% against the kd-student's 12% is far beyond 2 s.e.; fashion-effnet at 25%:
    InherNet beats prune-kd by 1 point, 2.2 s.e. on 10,000 images (not bold), but ties the hybrid (bold)."""
    assert summary_cells("At a parameter or MAC budget", "fashion-dual")["best"] == "inhernet"
    lines = [line for line in COMMITTED.splitlines() if line.startswith("| fashion-effnet, 25% params")]
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    bold = [c for c in cells if c.startswith("**")]
    _, by_name = methods_of("fashion-effnet-0.25-2000.json")
    scores = {n: score([r["final"] for r in m["per_seed"]], 10_000) for n, m in by_name.items()}
    assert verdict(scores["inhernet"], scores["prune-kd"]) == "better"
    assert len(bold) == 2 and all(c.startswith(f"**{by_name[n]['metric_mean'] * 100:.2f}±") for c, n in
                                  zip(bold, ("inhernet", "inhernet-prune"), strict=True))


def test_a_latency_summary_cell_carries_the_measured_time():
    result, by_name = methods_of("tweets-minilm-latency0.5-300-checked.json")
    cells = summary_cells("At a latency budget (measured)", "tweets-minilm, 50% latency")
    inh = by_name["inhernet"]
    assert cells["inhernet"].endswith(f", {inh['latency_ms'] / result['teacher']['latency_ms']:.2f}x)")


@pytest.mark.parametrize(
    ("recorded", "today"),
    [
        ("OMP_NUM_THREADS=1 python benchmarks/experts_pay.py --seeds 1",
         "OMP_NUM_THREADS=1 python -m inhernet_bench.scripts.experts_pay --seeds 1"),
        ("/work/main/.venv/bin/python benchmarks/zero_shot.py", "python -m inhernet_bench.scripts.zero_shot"),
        ("OMP_NUM_THREADS=2 inhernet bench --preset mnist-cnn --json benchmarks/results/x.json",
         "OMP_NUM_THREADS=2 inhernet-bench bench --preset mnist-cnn --json benchmarks/results/x.json"),
        ("python -m inhernet_bench.scripts.latency --latency 0.8", "python -m inhernet_bench.scripts.latency --latency 0.8"),
    ],
)
def test_recorded_commands_are_shown_as_they_run_today(recorded, today):
    assert benchmarks_md.current_command(recorded) == today


SECTIONS = """
title = "Benchmarks"
intro = "Generated."

[[section]]
title = "smollm2-bbc"

[[section.table]]
json = "run/smollm2-bbc-0.789.json"
"""


def tiny_root(tmp_path: Path, sections: str = SECTIONS) -> Path:
    """A repository with one committed run (its JSON and the markdown that records its command)."""
    source = RESULTS / "smollm2-kd-200-0.789-seeds"
    target = tmp_path / "benchmarks" / "results" / "run"
    target.mkdir(parents=True)
    for suffix in (".json", ".md"):
        shutil.copy(source / f"smollm2-bbc-0.789{suffix}", target / f"smollm2-bbc-0.789{suffix}")
    (tmp_path / "benchmarks" / "sections.toml").write_text(sections)
    return tmp_path


def test_check_fails_in_one_line_until_the_file_is_rendered(tmp_path, capsys):
    root = tiny_root(tmp_path)
    (root / "BENCHMARKS.md").write_text("# Benchmarks\n\nedited by hand\n")
    assert benchmarks_md.main(["--check", "--root", str(root)]) == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "BENCHMARKS.md is stale" in message
    assert benchmarks_md.main(["--root", str(root)]) == 0
    assert benchmarks_md.main(["--check", "--root", str(root)]) == 0
    text = (root / "BENCHMARKS.md").read_text()
    assert "python -m inhernet_bench.scripts.smollm2_kd --budget 0.789" in text
    assert not list((root).glob(".BENCHMARKS.md.*"))  # written atomically: no temporary file left behind


def test_a_file_without_a_recorded_command_needs_one_in_the_sections(tmp_path):
    root = tiny_root(tmp_path)
    (root / "benchmarks" / "results" / "run" / "smollm2-bbc-0.789.md").unlink()
    with pytest.raises(ValueError, match="records no command: give the table a `command`"):
        benchmarks_md.render(root)
    fixed = SECTIONS + 'command = "python benchmarks/smollm2_kd.py --budget 0.789"\n'
    (root / "benchmarks" / "sections.toml").write_text(fixed)
    assert "python -m inhernet_bench.scripts.smollm2_kd --budget 0.789" in benchmarks_md.render(root)


def test_a_summary_row_refuses_files_of_different_setups(tmp_path):
    root = tiny_root(tmp_path, SECTIONS + """
[[section.summary]]
title = "mixed"
rows = [{ sources = [{ file = "run/smollm2-bbc-0.789.json" }, { file = "other.json" }] }]
""")
    other = json.loads((RESULTS / "smollm2-kd-1000-0.8" / "smollm2-bbc-0.8.json").read_text())
    (root / "benchmarks" / "results" / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=re.escape("other.json has budget=0.8")):
        benchmarks_md.render(root)


def test_a_scripts_markdown_gives_its_tables_with_the_heading_and_paragraph_above_them():
    text = "# Title\n\nCommand: `python benchmarks/x.py`\n\nSetup line.\n\n## Batch 1\n\n| a |\n|---|\n| 1 |\n\nAfter.\n"
    (heading, paragraph, rows), = benchmarks_md.markdown_tables(text)
    assert heading == "Batch 1" and paragraph == [] and rows == ["| a |", "|---|", "| 1 |"]
    (_, paragraph, _), = benchmarks_md.markdown_tables("Command: `c`\n\nSetup line.\n\n| a |\n")
    assert paragraph == ["Setup line."]


def test_rendering_outside_a_checkout_says_to_pass_the_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --root"):
        benchmarks_md.render(tmp_path)


def test_the_teachers_table_is_their_records():
    """Each converged teacher's row: its record's best validation score and step, steps run, the test score."""
    lines = COMMITTED.splitlines()
    for path in sorted((RESULTS / "teachers").glob("*.json")):
        record = json.loads(path.read_text())
        (metric, val), = record["validation"].items()
        row = next(line for line in lines if line.startswith(f"| {path.stem} | {metric} |"))
        assert f"{val:.4f} at step {record['best_step']:,}" in row
        unit = " tokens" if metric == "perplexity" else ""
        assert f"| {record['test'][metric]:.4f} ({int(record['test']['count']):,}{unit}) |" in row
        assert f"| {record['steps']:,} ({record['stopped']}) |" in row


def early_stopped_copy(root: Path, name: str, cap: int, methods: list[str]) -> None:
    """A committed fashion-effnet result as if its runs had stopped on validation under a ``cap`` of steps."""
    result = json.loads((RESULTS / "fashion-effnet-0.25-2000.json").read_text())
    result["steps"], result["schedule"] = cap, {"lr": "constant", "patience": 5}
    result["methods"] = [{**m, "steps": cap - 200} for m in result["methods"] if m["name"] in methods]
    (root / "benchmarks" / "results" / name).write_text(json.dumps(result))


def test_a_row_of_runs_stopped_on_validation_may_take_each_method_from_its_own_step_cap(tmp_path):
    """Methods that had not flattened under one cap run again under a longer one; the row says whose cap is whose."""
    root = tiny_root(tmp_path, SECTIONS + """
[[section.summary]]
title = "converged"
rows = [{ sources = [{ file = "short.json" }, { file = "long.json", methods = ["kd-student"] }] }]
""")
    early_stopped_copy(root, "short.json", 3000, ["inhernet", "kd-student", "prune-kd"])
    early_stopped_copy(root, "long.json", 12000, ["kd-student", "svd-kd"])
    row = next(line for line in benchmarks_md.render(root).splitlines() if line.startswith("| fashion-effnet"))
    assert "until validation stops improving, at most 3,000 steps (12,000: kd-student)" in row
    assert "svd-kd" not in row.split("|")[2]
    result = json.loads((root / "benchmarks" / "results" / "long.json").read_text())
    del result["schedule"]  # a fixed-step run is another setup, refused by name
    (root / "benchmarks" / "results" / "long.json").write_text(json.dumps(result))
    with pytest.raises(ValueError, match=re.escape("long.json has schedule=None")):
        benchmarks_md.render(root)
