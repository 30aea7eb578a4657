"""Render BENCHMARKS.md from the committed result files, so that no number in it is typed by hand.

    python -m inhernet_bench.benchmarks_md            # rewrite BENCHMARKS.md (atomically)
    python -m inhernet_bench.benchmarks_md --check    # exit 1 if the committed BENCHMARKS.md is stale

What goes where is read from ``benchmarks/sections.toml``: the order of the sections, the result files each
table is rendered from, and short hand-written captions (no measured numbers). A bench JSON (from
``inhernet-bench bench`` or ``scripts.smollm2_kd``) is rendered by ``scripts.bench_markdown.render``; a script's
own markdown (``latency.md``, ``experts_sweep-*.md``, ...) contributes the tables it wrote. The summary table
("Which method should I use?") is computed here from the bench JSONs. Every table is headed by the command that
made it: the one the result file records, else the one ``sections.toml`` copies from where the file was first
published (older files did not record it), in today's spelling (``python -m inhernet_bench.scripts.X``,
``inhernet-bench bench``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from inhernet._atomic import atomic_write
from inhernet_bench.scripts.bench_markdown import render as render_bench
from inhernet_bench.stats import Score, best_and_ties, score

try:  # the standard library's from Python 3.11; the same parser as the `tomli` package before it
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The repository this module sits in (src/inhernet_bench/benchmarks_md.py -> the root).
ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path("benchmarks/results")
SECTIONS = Path("benchmarks/sections.toml")
OUTPUT = Path("BENCHMARKS.md")

#: Column order of the summary table; methods not listed come after, in the order first met.
METHOD_ORDER = ("inhernet", "inhernet-paper", "inhernet-prune", "inhernet-layerdrop", "layerdrop-kd", "prune-kd",
                "svd-kd", "kd-student")

_OLD_SCRIPT = re.compile(r"(?:\S*/)?python3?\s+(?:\./)?benchmarks/(\w+)\.py")
_OLD_CLI = re.compile(r"\binhernet bench\b")
_RECORDED = re.compile(r"Command:\s*`([^`]+)`")


def current_command(command: str) -> str:
    """``command`` in today's spelling: ``python benchmarks/X.py`` ran as a file, now a module of the harness;
    ``inhernet bench`` moved to the harness's own CLI. Everything else (flags, environment) stays as recorded."""
    command = _OLD_SCRIPT.sub(lambda m: f"python -m inhernet_bench.scripts.{m[1]}", command)
    return _OLD_CLI.sub("inhernet-bench bench", command).strip()


def recorded_command(path: Path) -> str | None:
    """The command a result file records: a JSON's ``command`` key, else the first ``Command: `...` `` line of
    the markdown the same run wrote (``X.md`` beside ``X.json``, or the file itself); ``None`` if neither has one."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("command"):
            return str(data["command"])
        path = path.with_suffix(".md")
    if path.exists():
        found = _RECORDED.search(path.read_text())
        if found:
            return found[1]
    return None


@dataclass
class Context:
    """Where the renderer reads from: the repository root (result paths are relative to ``root / RESULTS``)."""

    root: Path

    def result(self, name: str) -> Path:
        path = self.root / RESULTS / name
        if not path.exists():
            raise FileNotFoundError(f"sections.toml names {RESULTS / name}, which does not exist; "
                                    f"list a file under {RESULTS}/")
        return path

    def load(self, name: str) -> dict:
        return json.loads(self.result(name).read_text())

    def command(self, name: str, fallback: str | None) -> str:
        """The command behind result ``name``: recorded by the file, else ``fallback`` from sections.toml."""
        recorded = recorded_command(self.result(name))
        if recorded is None and not fallback:
            raise ValueError(f"{RESULTS / name} records no command: give the table a `command` in {SECTIONS}")
        return current_command(recorded or fallback or "")


def command_block(commands: list[str]) -> list[str]:
    """The fenced block that heads every table: each distinct command once, in order."""
    unique = list(dict.fromkeys(commands))
    return ["```bash", *unique, "```", ""]


def caption_lines(entry: dict) -> list[str]:
    return [entry["caption"].strip(), ""] if entry.get("caption") else []


# -- the summary table ---------------------------------------------------------------------------------------

def score_text(value: float, metric: str, se: float | None = None) -> str:
    """A final metric as the summary prints it: accuracies in percent, anything else (perplexity) as is;
    with its standard error ``se`` as ``±se`` (one word, like the number)."""
    if "accuracy" in metric:
        return f"{value * 100:.2f}" + ("" if se is None else f"±{se * 100:.2f}") + "%"
    return f"{value:.2f}" + ("" if se is None else f"±{se:.2f}")


def method_score(method: dict, metric: str, test_count: int | None) -> Score:
    """A method's mean ± s.e. over its seeds, with the test set's binomial error for an accuracy measured on
    ``test_count`` examples (:mod:`inhernet_bench.stats`)."""
    return score([run["final"] for run in method["per_seed"]], test_count if "accuracy" in metric else None)


def cell_text(method: dict, teacher: dict, metric: str, se: float | None = None) -> str:
    """One method's score (± its s.e.) and, in brackets, its size as shares of the teacher's (params, MACs,
    measured time)."""
    sizes = [f"{method['params'] / teacher['params']:.0%}", f"{method['macs'] / teacher['macs']:.0%}"]
    if "latency_ms" in method and "latency_ms" in teacher:
        sizes.append(f"{method['latency_ms'] / teacher['latency_ms']:.2f}x")
    return f"{score_text(method['metric_mean'], metric, se)} ({', '.join(sizes)})"


def early_stopped(result: dict) -> bool:
    """Whether ``result``'s runs stopped on validation (``--patience``): each ran to its own step, under a cap."""
    return bool(result.get("schedule", {}).get("patience"))


def row_results(ctx: Context, row: dict) -> tuple[dict, dict[str, dict], list[str]]:
    """The first source's result, the methods the row takes from all sources (each with its file's step
    ``cap``), and the source names. Sources of one row must be the same measurement (preset, budget, unit,
    schedule) and, unless their runs stopped on validation, the same steps: it says which differs."""
    first, methods, names = None, {}, []
    for source in row["sources"]:
        result = ctx.load(source["file"])
        names.append(source["file"])
        if first is None:
            first = result
        for key in ("preset", "budget", "match", "metric", "schedule"):
            if result.get(key) != first.get(key):
                raise ValueError(f"summary row {row['sources'][0]['file']}: {source['file']} has {key}="
                                 f"{result.get(key)!r}, the row's first file {first.get(key)!r}; one row, one setup")
        for m in result["methods"]:
            if not early_stopped(result) and m["steps"] != first["methods"][0]["steps"]:
                raise ValueError(f"summary row: {source['file']}'s {m['name']} ran {m['steps']} steps, "
                                 f"the row {first['methods'][0]['steps']}")
            if m["name"] in source.get("methods", [m["name"]]):
                methods[m["name"]] = {**m, "cap": result.get("steps", m["steps"])}
    return first, methods, names


def schedule_text(result: dict, methods: dict[str, dict]) -> str:
    """Steps (epochs) or, for runs stopped on validation, the step caps; seeds and the learning rate."""
    if early_stopped(result):
        caps = sorted({m["cap"] for m in methods.values()})
        longer = [f"{cap:,}: {', '.join(n for n, m in methods.items() if m['cap'] == cap)}" for cap in caps[1:]]
        text = f"until validation stops improving, at most {caps[0]:,} steps" + (f" ({'; '.join(longer)})"
                                                                                  if longer else "")
    else:
        steps = next(iter(methods.values()))["steps"]
        text = f"{steps:,} steps" + (f" ({result['epochs']} epoch{'s' * (result['epochs'] != 1)})"
                                     if result.get("epochs") else "")
    seeds = sorted({len(m["seeds"]) for m in methods.values()})
    text += f", {'-'.join(map(str, seeds))} seed{'s' * (seeds[-1] != 1)}"
    if result.get("tuning"):
        return text + ", lr tuned per method"
    rates = sorted({m["lr"] for m in methods.values() if m.get("lr") is not None})
    return text + (f", lr {' / '.join(f'{r:g}' for r in rates)}" if rates else "")


def summary_row(ctx: Context, row: dict, columns: list[str]) -> str:
    """One row: the best method, or "tie" when it does not beat every other by more than 2 s.e. of the
    difference; the best and the methods tied with it in bold. The test set's size is the file's
    ``test_count``, else the row's (for files older than that field)."""
    result, methods, names = row_results(ctx, row)
    metric, teacher = result["metric"], result["teacher"]
    unit = {"macs": "MACs", "latency": "latency"}.get(result.get("match", "params"), "params")
    scores = {name: method_score(m, metric, result.get("test_count", row.get("test_count"))) for name, m in methods.items()}
    best, tied = best_and_ties(scores, result["higher_is_better"])
    cells = [
        "" if c not in methods else
        f"**{cell_text(methods[c], teacher, metric, scores[c].se)}**" if c in tied else
        cell_text(methods[c], teacher, metric, scores[c].se) for c in columns
    ]
    note = f" ({row['note']})" if row.get("note") else ""
    label = f"{result['preset']}, {result['budget']:.0%} {unit}{note}"
    sources = ", ".join(f"`{n}`" for n in names)
    return "| " + " | ".join([label, schedule_text(result, methods), best if tied == [best] else "tie",
                              score_text(teacher["metric"], metric),
                              *cells, sources]) + " |"


def summary_columns(ctx: Context, rows: list[dict]) -> list[str]:
    seen: list[str] = []
    for row in rows:
        seen += [name for name in row_results(ctx, row)[1] if name not in seen]
    return sorted(seen, key=lambda n: (METHOD_ORDER.index(n) if n in METHOD_ORDER else len(METHOD_ORDER),
                                       seen.index(n)))


def render_summary(ctx: Context, table: dict) -> list[str]:
    """One summary table: a row per preset and budget, a column per method, the best and its ties in bold."""
    columns = summary_columns(ctx, table["rows"])
    lines = [f"### {table['title']}", "", *caption_lines(table),
             *command_block(["python -m inhernet_bench.benchmarks_md  # from the files in the last column"]),
             "| preset, budget | schedule | best | teacher | " + " | ".join(columns) + " | from |",
             "|---|---|---|---:|" + "---:|" * len(columns) + "---|"]
    return lines + [summary_row(ctx, row, columns) for row in table["rows"]] + [""]


# -- tables of single result files ---------------------------------------------------------------------------

def render_json_table(ctx: Context, entry: dict) -> list[str]:
    """A bench JSON's table by ``bench_markdown.render``, its heading first, then caption, command, table,
    and the run's plot where one was committed beside it."""
    name = entry["json"]
    heading, *rest = render_bench(ctx.load(name)).splitlines()
    lines = [heading, "", *caption_lines(entry), *command_block([ctx.command(name, entry.get("command"))])]
    while rest and not rest[0]:  # the blank line under the heading: the command block already ends with one
        rest.pop(0)
    lines += rest + ([""] if rest and rest[-1] else [])
    plot = ctx.result(name).with_suffix(".png")
    if entry.get("plot", True) and plot.exists():
        lines += [f"![{Path(name).stem}]({plot.relative_to(ctx.root).as_posix()})", ""]
    return lines


def markdown_tables(text: str) -> list[tuple[str | None, list[str], list[str]]]:
    """Each table of a script's markdown: (the heading above it, the paragraph right before it, its rows).
    ``Command:`` lines are left out of the paragraphs: the command heads the table anyway."""
    found, heading, paragraph, last, rows = [], None, [], [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append(line)
            continue
        if rows:
            found.append((heading, paragraph or last, rows))
            paragraph, last, rows = [], [], []
        if line.startswith("#"):
            heading, paragraph, last = line.lstrip("#").strip(), [], []
        elif not line.strip():
            last, paragraph = (paragraph or last), []
        elif not _RECORDED.search(line):
            paragraph.append(line)
    return found


def render_md_tables(ctx: Context, entry: dict) -> list[str]:
    """The tables a script wrote to its markdown (``tables``: which, counting from 1; all by default), each
    under the file's sub-heading where the file has several, with ``context = true`` the paragraph before it."""
    name = entry["md"]
    found = markdown_tables(ctx.result(name).read_text())
    picks = entry.get("tables", list(range(1, len(found) + 1)))
    lines = [f"### {entry['title']}", "", *caption_lines(entry), *command_block([ctx.command(name, entry.get("command"))])]
    for index in picks:
        if not 1 <= index <= len(found):
            raise ValueError(f"{name} has {len(found)} tables; sections.toml asks for table {index}")
        heading, paragraph, rows = found[index - 1]
        if len(picks) > 1 and heading:
            lines += [f"*{heading}*", ""]
        if entry.get("context") and paragraph:
            lines += [*paragraph, ""]
        lines += [*rows, ""]
    return lines


def render_picked(ctx: Context, entry: dict) -> list[str]:
    """A table of chosen methods from several bench JSONs (an ablation across runs): one row per pick, with the
    row's hand-written label (the knob it varies), and the commands of every run it reads."""
    rows, commands, metric = [], [], None
    for pick in entry["rows"]:
        result = ctx.load(pick["file"])
        metric = metric or result["metric"]
        method = next((m for m in result["methods"] if m["name"] == pick["method"]), None)
        if method is None:
            raise ValueError(f"{pick['file']} has no method {pick['method']!r}; it has "
                             f"{[m['name'] for m in result['methods']]}")
        t = result["teacher"]
        commands.append(ctx.command(pick["file"], pick.get("command")))
        rows.append(f"| {pick['label']} | {method['params']:,} ({method['params'] / t['params']:.1%}) | "
                    f"{method['zero_shot']:.2f} | {method['metric_mean']:.2f} | {method['steps']} | "
                    f"{len(method['seeds'])} |")
    return [f"### {entry['title']}", "", *caption_lines(entry), *command_block(commands),
            f"| run | params | zero-shot {metric} | final {metric} | KD steps | seeds |",
            "|---|---:|---:|---:|---:|---:|", *rows, ""]


def render_teachers(ctx: Context, entry: dict) -> list[str]:
    """The converged teachers (``inhernet-bench teacher`` records): where validation peaked, why training
    stopped, the test score of the kept checkpoint, the recipe's optimiser settings and the wall time."""
    rows, commands = [], []
    for name in entry["teachers"]:
        record = ctx.load(name)
        (metric, val), = record["validation"].items()
        recipe = record["recipe"]
        commands.append(ctx.command(name, None))
        unit = " tokens" if metric == "perplexity" else ""
        rows.append(f"| {Path(name).stem} | {metric} | {val:.4f} at step {record['best_step']:,} | "
                    f"{record['steps']:,} ({record['stopped']}) | {record['test'][metric]:.4f} "
                    f"({int(record['test'].get('count', 0)):,}{unit}) | {recipe['lr']:g}, {recipe['batch_size']} | "
                    f"{record['wall_s'] / 60:.0f} min |")
    return [f"### {entry['title']}", "", *caption_lines(entry), *command_block(commands),
            "| preset | metric | best validation | steps run (stopped by) | test (count) | lr, batch | wall time |",
            "|---|---|---:|---:|---:|---|---:|", *rows, ""]


RENDERERS = {"json": render_json_table, "md": render_md_tables, "rows": render_picked, "teachers": render_teachers}


def render_entry(ctx: Context, entry: dict) -> list[str]:
    kinds = [key for key in RENDERERS if key in entry]
    if len(kinds) != 1:
        raise ValueError(f"a table in {SECTIONS} needs exactly one of {sorted(RENDERERS)}, got {entry}")
    return RENDERERS[kinds[0]](ctx, entry)


def render(root: Path = ROOT) -> str:
    """BENCHMARKS.md as the committed results and ``benchmarks/sections.toml`` make it."""
    ctx = Context(root)
    if not (root / SECTIONS).exists():
        raise FileNotFoundError(f"{root / SECTIONS} not found: BENCHMARKS.md renders from a checkout of the "
                                "repository; pass --root with the checkout's path")
    spec = tomllib.loads((root / SECTIONS).read_text())
    lines = [f"# {spec['title']}", "", spec["intro"].strip(), ""]
    for section in spec["section"]:
        lines += [f"## {section['title']}", "", *caption_lines(section)]
        for table in section.get("summary", []):
            lines += render_summary(ctx, table)
        for entry in section.get("table", []):
            lines += render_entry(ctx, entry)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the committed BENCHMARKS.md differs from the rendering")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: this checkout)")
    args = parser.parse_args(argv)
    text, target = render(args.root), args.root / OUTPUT
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{OUTPUT} is stale: run `python -m inhernet_bench.benchmarks_md` (or `make benchmarks-md`) "
                  "and commit it", file=sys.stderr)
            return 1
        return 0
    atomic_write(target, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
