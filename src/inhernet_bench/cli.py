"""The ``inhernet-bench`` command line: ``demo``, ``presets``, ``plan``, ``teacher`` and ``bench`` on the presets (real
teachers and data installed offline by ``scripts/install_assets.sh``)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from inhernet.cli import (
    _DATA,
    _MODEL_SPEC,
    ALLOCATION,
    BUDGET,
    EXPERTS,
    INIT,
    budget_value,
    console,
    debug_option,
    print_plan,
    run,
)

if TYPE_CHECKING:  # the runner (torch, the presets) is imported by the commands that use it
    from .runner import BenchConfig

PRESET = click.option("--preset", default="mnist-cnn", show_default=True, help="See `inhernet-bench presets`.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@debug_option
@click.version_option(package_name="inhernet")
def cli() -> None:
    """InherNet side by side with the methods users would otherwise pick, on real teachers and data."""


@cli.command()
def methods() -> None:
    """List the methods a benchmark can compare (the first line of each builder's docstring; how each is
    built and sized: docs/design.md, "Benchmark methods")."""
    from .baselines import METHODS

    table = Table("method", "student")
    for name, build in METHODS.items():
        table.add_row(name, (build.__doc__ or "").strip().split("\n")[0])
    console.print(table)


@cli.command()
def presets() -> None:
    """List the benchmark presets (their teachers, data and metrics: docs/design.md, "Presets")."""
    from .presets.registry import PRESETS

    table = Table("preset", "metric", "teacher and data")
    for p in PRESETS.values():
        table.add_row(p.name, p.metric, p.description)
    console.print(table)


@cli.command()
@PRESET
@BUDGET
@EXPERTS
@INIT
@ALLOCATION
@click.option("--calib-size", default=1000, show_default=True, help="Calibration examples for --init whiten.")
def plan(preset: str, budget: float, experts: int, init: str, allocation: str, calib_size: int) -> None:
    """Print the per-layer inheritance plan of a preset's teacher."""
    from inhernet import InherConfig
    from inhernet import plan as make_plan

    from .presets.registry import get_preset

    p = get_preset(preset)
    cfg = InherConfig(budget=budget_value(budget), experts=experts, init=init, allocation=allocation)
    teacher = p.teacher()
    print_plan(make_plan(teacher, cfg, calib=p.calib(calib_size) if init == "whiten" else None))


def _run_bench(cfg: BenchConfig, out: str, json_path: str | None) -> None:
    """Run ``cfg``, print its table and write its JSON and plot (under ``out``, or the JSON at ``json_path``)."""
    from pathlib import Path

    from . import bench_table, run_bench, write_json, write_plots

    result = run_bench(cfg, log=lambda line: console.print(line, highlight=False))
    # the command that made the file: BENCHMARKS.md heads each table with it
    result["command"] = shlex.join(["inhernet-bench", *sys.argv[1:]])
    console.print(bench_table(result))
    out_dir = Path(out)
    stem = f"{cfg.preset}-{cfg.budget}" + ("" if cfg.match == "params" else f"-{cfg.match}")
    json_file = write_json(result, json_path or out_dir / f"{stem}.json")
    png = write_plots(result, out_dir / f"{stem}.png")
    console.print(f"wrote {json_file} and {png} ({result['wall_s']:.0f} s)")


def _options(*decorators: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Callable[..., Any]:
    """One decorator applying ``decorators`` in order (the first is listed first in ``--help``)."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


#: what is compared: the preset, the size every row is held to and the rows themselves
_SIZE_OPTIONS = _options(
    PRESET,
    BUDGET,
    EXPERTS,
    click.option(
        "--match", type=click.Choice(["params", "macs", "latency"]), default="params", show_default=True,
        help="Equal size in parameters, in multiply-accumulates (--budget is then a share of the teacher's MACs), or "
        "in measured latency of the deployed forms on the first calibration batch (--budget is then a share of "
        "the teacher's latency on this machine; InherNet is sized by InherConfig(latency=...)).",
    ),
    click.option(
        "--methods", default=None, help="Comma-separated methods, e.g. inhernet,kd-student,svd-kd "
        "(default: the preset's list; `inhernet-bench methods` names them).",
    ),
    click.option("--reference", default="inhernet", show_default=True,
                 help="The method whose model sizes the baselines, e.g. inhernet-prune where a latency budget is out "
                 "of reach of rank cuts alone."),
    click.option("--drop-blocks", type=click.FloatRange(min=0, max=1), default=None, metavar="SHARE",
                 help="InherConfig(drop_blocks=SHARE) for the InherNet rows: the share of the parameter cut paid with "
                 "whole transformer blocks (0: keep every block; 1: as many as fit) [the family's: 1 for causal "
                 "LMs]."),
)

#: how each row is trained and measured
_TRAINING_OPTIONS = _options(
    click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds 0..N-1."),
    click.option("--seed", "seed_list", type=click.IntRange(min=0), multiple=True,
                 help="Run only this seed (repeatable), instead of 0..N-1 of --seeds: e.g. one seed per session."),
    click.option("--steps", type=click.IntRange(min=1), default=None, help="KD steps (default: one epoch)."),
    click.option("--epochs", type=click.IntRange(min=1), default=None,
                 help="Instead of --steps: passes over the whole training split (epochs x batches per epoch steps)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
                 help="Learning rate of every method (without --tune-lr)."),
    click.option("--tune-lr", is_flag=True,
                 help="Give each method its best lr of --lr-grid, scored after short runs on a validation split "
                 "of the training data (never the test split)."),
    click.option("--lr-grid", default="3e-4,1e-3,3e-3", show_default=True, help="Comma-separated lrs for --tune-lr."),
    click.option("--tune-steps", type=click.IntRange(min=1), default=None,
                 help="Steps of each tuning run [25% of the steps, at least 10]."),
    click.option("--lr-extensions", type=click.IntRange(min=0), default=3, show_default=True,
                 help="With --tune-lr: while a method's best lr is at an edge of the grid, add the lr one grid step "
                 "beyond it and tune again, at most this many times (0: the grid as given)."),
    click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True,
                 help="constant: every run keeps its lr and ends with its best validation point (needs "
                 "--curve-split validation): a method is judged where it converged, not on a cosine tail."),
    click.option("--curve-split", type=click.Choice(["test", "validation"]), default="test", show_default=True,
                 help="Where learning curves are measured: validation (carved from the training split, never "
                 "trained on) reads the test split only for each run's final score."),
    click.option("--val-examples", type=click.IntRange(min=1), default=2000, show_default=True,
                 help="Examples of the validation split (--tune-lr, --curve-split validation): the preset's own "
                 "where it has one, else the end of the training split (at most a fifth of it)."),
    click.option("--patience", type=click.IntRange(min=1), default=None,
                 help="With --schedule constant: stop a run after this many validation points without a better one."),
    click.option("--curve-points", type=click.IntRange(min=1), default=10, show_default=True,
                 help="Evaluations along each learning curve (fewer: a faster run on a CPU)."),
    click.option("--full-test", is_flag=True,
                 help="Measure on the preset's whole test split where its default is a subset (fashion-effnet: all "
                 "10,000 images instead of 500)."),
)

#: where the result goes, and how a long run is kept in parts
_OUTPUT_OPTIONS = _options(
    click.option("--out", default="out/bench", show_default=True, help="Directory for the JSON and the plot."),
    click.option("--json", "json_path", default=None, help="Write the JSON here instead of under --out."),
    click.option("--part-dir", default=None, type=click.Path(file_okay=False),
                 help="Keep each finished (method, seed) run and each method's lr tuning here as its own JSON; a "
                 "rerun with the same configuration skips them, and the result is assembled from the parts."),
    click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True, metavar="STEPS",
                 help="With --part-dir: save each run's training state every STEPS steps, and continue an "
                 "interrupted run from its last checkpoint when rerun (0: no checkpoints)."),
)


@cli.command()
@_SIZE_OPTIONS
@_TRAINING_OPTIONS
@_OUTPUT_OPTIONS
def bench(out: str, json_path: str | None, **options: Any) -> None:
    """InherNet against matched-size baselines on a preset: same data, steps, optimiser, seeds.

    \b
    A long benchmark in parts (one method and seed per session, then the assembled table):
      inhernet-bench bench --preset mnist-cnn --budget 0.1 --epochs 5 --tune-lr --seed 0 --methods prune-kd \\
          --part-dir benchmarks/parts/mnist-cnn-0.1 --json /tmp/one-part.json
      inhernet-bench bench --preset mnist-cnn --budget 0.1 --epochs 5 --tune-lr --seeds 3 \\
          --part-dir benchmarks/parts/mnist-cnn-0.1 --out benchmarks/results

    \b
    Judged where each method converged (constant lr, best validation point, early stop), on the whole test split:
      inhernet-bench bench --preset fashion-dual --budget 0.25 --tune-lr --schedule constant \\
          --curve-split validation --patience 5 --full-test --seeds 3 --part-dir benchmarks/parts/fashion-dual-0.25
    """
    _run_bench(_bench_config(**options), out, json_path)


def _bench_config(
    preset: str, budget: float, seeds: int, seed_list: tuple[int, ...], methods: str | None, lr_grid: str,
    drop_blocks: float | None, **options: Any,
) -> BenchConfig:
    """The :class:`BenchConfig` of ``bench``'s options: the ones whose command-line form differs from the
    field's are parsed here, the rest (``experts``, ``steps``, ``match``, ...) pass through by name."""
    from . import BenchConfig
    from .presets.registry import get_preset

    get_preset(preset)  # fail fast on an unknown name
    if options["steps"] is not None and options["epochs"] is not None:
        raise click.BadParameter("give --steps or --epochs, not both", param_hint="--epochs")
    return BenchConfig(
        preset=preset, budget=budget_value(budget), seeds=tuple(sorted(set(seed_list))) or tuple(range(seeds)),
        methods=tuple(m.strip() for m in methods.split(",")) if methods else None, lr_grid=_lr_grid(lr_grid),
        inherit_overrides={} if drop_blocks is None else {"drop_blocks": drop_blocks}, **options,
    )


@cli.command("compare")
@click.argument("model")
@_MODEL_SPEC
@_DATA
@click.option("--test", "test_path", type=click.Path(), default=None,
              help="Test data, in --data's format [--test-fraction of --data, held out with --seed].")
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Without --test: the share of --data held out as the test split.")
@BUDGET
@EXPERTS
@click.option("--methods", default=None, help="Comma-separated methods [those of inhernet, inhernet-paper, kd-student, "
              "prune-kd, svd-kd, layerdrop-kd that apply to the model].")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds 0..N-1 of every method.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="KD steps (default: one epoch).")
@click.option("--lr-grid", default="3e-4,1e-3,3e-3", show_default=True, help="Comma-separated lrs to tune each method on.")
@click.option("--tune-steps", type=click.IntRange(min=1), default=None,
              help="Steps of each tuning run [25% of the steps, at least 10].")
@click.option("--val-examples", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Validation examples carved from the end of the (shuffled) training split, at most a fifth of it.")
@click.option("--curve-points", type=click.IntRange(min=1), default=10, show_default=True,
              help="Validation evaluations along each learning curve.")
@_OUTPUT_OPTIONS
def compare_command(
    model: str, weights: str | None, task: str | None, num_classes: int | None, data: str, prep: dict[str, Any],
    batch_size: int, seed: int, test_path: str | None, test_fraction: float, methods: str | None, lr_grid: str,
    out: str, json_path: str | None, **options: Any,
) -> None:
    """Which method for MODEL? Every method that applies, side by side on your data, with significance.

    MODEL and --data as `inhernet compress` takes them (torchvision:NAME / timm:NAME with --weights, a
    Hugging Face directory, or a directory from `inhernet compress`: its teacher). Each method's lr is
    tuned on a validation split of the training data, learning curves are measured there, and the test
    split is read once per final row. Prints mean ± s.e. over --seeds, params, MACs, latency over the
    teacher's, the verdict against the best ("better" only beyond 2 s.e. of the difference) and a
    recommendation; writes the JSON. --part-dir keeps each finished (method, seed) run: a rerun resumes.

    \b
    Example:
      inhernet-bench compare ./my-bert --data reviews-train.csv --test reviews-test.csv --budget 0.5 \\
          --seeds 3 --part-dir out/compare-parts
    """
    from pathlib import Path

    from . import BenchConfig, write_json
    from .compare import UserModel, compare, compare_table

    cfg = BenchConfig(
        preset=model, budget=budget_value(options.pop("budget")), seeds=tuple(range(options.pop("seeds"))),
        methods=tuple(m.strip() for m in methods.split(",")) if methods else None, lr_grid=_lr_grid(lr_grid),
        batch_size=batch_size, progress=False, **options,
    )
    user = UserModel(model, data, test_path, weights, task, num_classes, prep, test_fraction, seed)
    result = compare(user, cfg, log=lambda line: console.print(line, highlight=False))
    result["command"] = shlex.join(["inhernet-bench", *sys.argv[1:]])
    console.print(compare_table(result))
    json_file = write_json(result, json_path or Path(out) / f"compare-{cfg.budget}.json")
    console.print(f"{result['recommendation']}\nwrote {json_file} ({result['wall_s']:.0f} s)", highlight=False)


def _lr_grid(text: str) -> tuple[float, ...]:
    """``--lr-grid``'s learning rates."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint="--lr-grid") from None


@cli.command()
@click.option("--preset", required=True, help="A preset with a teacher to train: fashion-effnet, tweets-minilm, "
              "fashion-dual or smollm2-bbc.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="End this part cleanly after this many minutes (its state saved); rerun to continue.")
@click.option("--record-dir", default="benchmarks/results/teachers", show_default=True,
              help="Where the finished teacher's record is copied as PRESET.json.")
@click.option("--device", default="cpu", show_default=True, help="Where to train, e.g. cuda.")
def teacher(preset: str, max_minutes: float | None, record_dir: str, device: str) -> None:
    """Train a preset's teacher until its validation score stops improving, and cache the best checkpoint.

    \b
    Trains on the training split minus a validation split carved from it, at a constant learning rate after
    warm-up, keeping the best checkpoint; stops after the recipe's patience of evaluations without
    improvement; reads the test split once at the end. The cache (under INHERNET_HOME, keyed by the recipe)
    is what `bench` uses. Resumable in parts:
      inhernet-bench teacher --preset fashion-effnet --max-minutes 60   # repeat until it says done
    """
    from .teachers import build_preset_teacher

    record = build_preset_teacher(preset, max_minutes=max_minutes, record_dir=record_dir, device=device,
                                  log=lambda line: console.print(line, highlight=False))
    if record is None:
        console.print(f"not done yet: rerun `inhernet-bench teacher --preset {preset}` to continue")


@cli.command()
@click.argument("result", type=click.Path(exists=True, dir_okay=False))
@click.option("--parts", default=None, type=click.Path(file_okay=False),
              help="The run's --part-dir, for per-seed curves and s.e. bands [default: ../parts/<RESULT's stem> "
                   "beside the results folder, when it exists; else each method's mean curve].")
@click.option("--out", default="out/curves", show_default=True, help="Folder for <stem>-curves.png and .md.")
def curves(result: str, parts: str | None, out: str) -> None:
    """Where inheritance pays, drawn: score vs KD steps (log x) per method with s.e. bands across seeds, and
    the steps each needs to reach 95% / 99% of the teacher's score (docs/guides/compare.md, "Curves").

    \b
      inhernet-bench curves benchmarks/results/mnist-cnn-0.1-5ep.json --out out/curves
    """
    from .curves import write_curves

    png, table = write_curves(result, out, parts)
    console.print(table.read_text(), highlight=False, markup=False, soft_wrap=True)
    console.print(f"wrote {png} and {table}", highlight=False)


@cli.command()
@BUDGET
@EXPERTS
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="KD steps per method.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--out", default="out/demo", show_default=True)
def demo(budget: float, experts: int, steps: int, batch_size: int, out: str) -> None:
    """The embedded default: `bench --preset mnist-cnn`, one seed, a few minutes on a CPU.

    Real teacher (digit-recognizer-py CNN) on real MNIST: the inheritance plan, then InherNet and the
    matched-size baselines side by side — zero-shot, after KD, parameters, MACs and step time.
    """
    from inhernet import InherConfig
    from inhernet import plan as make_plan

    from . import BenchConfig
    from .presets.registry import get_preset

    preset = get_preset("mnist-cnn")
    cfg = InherConfig(budget=budget_value(budget), experts=experts)
    print_plan(make_plan(preset.teacher(), cfg, calib=preset.calib(1000)))
    bench_cfg = BenchConfig(
        preset="mnist-cnn", budget=cfg.budget, experts=experts, seeds=(0,), steps=steps, batch_size=batch_size,
        progress=False,
    )
    _run_bench(bench_cfg, out, None)
    console.print(
        f"{steps} KD steps is early training, where starting from the teacher is worth most; after 5 epochs "
        "every method on this preset ties, within 0.13 points (BENCHMARKS.md, 'mnist-cnn').",
        highlight=False,
    )


def main() -> None:
    """The ``inhernet-bench`` entry point."""
    run(cli)


if __name__ == "__main__":
    main()
