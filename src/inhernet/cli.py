"""The ``inhernet`` command line: ``demo``, ``presets``, ``plan``, ``bench``."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

# Logs and CI are not terminals: keep tables whole there instead of wrapping them at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)

_BUDGET = click.option(
    "--budget", type=float, default=0.1, show_default=True,
    help="Fraction (0, 1] of the teacher's parameters, or an absolute count if > 1.",
)
_EXPERTS = click.option("--experts", type=click.IntRange(min=1), default=3, show_default=True, help="Gated experts h.")
_INIT = click.option("--init", type=click.Choice(["whiten", "svd"]), default="whiten", show_default=True)
_ALLOCATION = click.option(
    "--allocation", type=click.Choice(["energy", "uniform"]), default="energy", show_default=True
)
_PRESET = click.option("--preset", default="mnist-cnn", show_default=True, help="See `inhernet presets`.")


def _budget_value(budget: float) -> float | int:
    if budget > 1:
        if budget != int(budget):
            raise click.BadParameter("an absolute budget must be a whole parameter count", param_hint="--budget")
        return int(budget)
    if budget <= 0:
        raise click.BadParameter("must be a fraction in (0, 1] or a parameter count", param_hint="--budget")
    return budget


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="inhernet")
def cli() -> None:
    """Compress a pretrained PyTorch model by network inheritance (InherNet)."""


@cli.command()
def presets() -> None:
    """List the benchmark presets."""
    from .presets.registry import PRESETS

    table = Table("preset", "metric", "teacher and data")
    for p in PRESETS.values():
        table.add_row(p.name, p.metric, p.description)
    console.print(table)


@cli.command()
@_PRESET
@_BUDGET
@_EXPERTS
@_INIT
@_ALLOCATION
@click.option("--calib-size", default=1000, show_default=True, help="Calibration examples for --init whiten.")
def plan(preset: str, budget: float, experts: int, init: str, allocation: str, calib_size: int) -> None:
    """Print the per-layer inheritance plan of a preset's teacher."""
    from . import InherConfig
    from . import plan as make_plan
    from .presets.registry import get_preset

    p = get_preset(preset)
    cfg = InherConfig(budget=_budget_value(budget), experts=experts, init=init, allocation=allocation)
    teacher = p.teacher()
    _print_plan(make_plan(teacher, cfg, calib=p.calib(calib_size) if init == "whiten" else None))


def _run_bench(cfg, out: str, json_path: str | None) -> None:
    from pathlib import Path

    from .bench import bench_table, run_bench, write_json, write_plots

    result = run_bench(cfg, log=lambda line: console.print(line, highlight=False))
    console.print(bench_table(result))
    out_dir = Path(out)
    json_file = write_json(result, json_path or out_dir / f"{cfg.preset}-{cfg.budget}.json")
    png = write_plots(result, out_dir / f"{cfg.preset}-{cfg.budget}.png")
    console.print(f"wrote {json_file} and {png} ({result['wall_s']:.0f} s)")


_METHODS = click.option(
    "--methods", default=None, help="Comma-separated methods, e.g. inhernet,kd-student,svd-kd "
    "(default: the preset's list; see DESIGN.md for the names).",
)


@cli.command()
@_PRESET
@_BUDGET
@_EXPERTS
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds 0..N-1.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="KD steps (default: one epoch).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@_METHODS
@click.option(
    "--curve-points", type=click.IntRange(min=1), default=10, show_default=True,
    help="Evaluations along each learning curve (fewer: a faster run on a CPU).",
)
@click.option("--out", default="out/bench", show_default=True, help="Directory for the JSON and the plot.")
@click.option("--json", "json_path", default=None, help="Write the JSON here instead of under --out.")
def bench(
    preset: str, budget: float, experts: int, seeds: int, steps: int | None, batch_size: int, lr: float,
    methods: str | None, curve_points: int, out: str, json_path: str | None,
) -> None:
    """InherNet against matched-size baselines on a preset: same data, steps, optimiser, seeds."""
    from .bench import BenchConfig
    from .presets.registry import get_preset

    get_preset(preset)  # fail fast on an unknown name
    chosen = tuple(m.strip() for m in methods.split(",")) if methods else None
    cfg = BenchConfig(
        preset=preset, budget=_budget_value(budget), experts=experts, seeds=tuple(range(seeds)), steps=steps,
        batch_size=batch_size, lr=lr, methods=chosen, curve_points=curve_points,
    )
    _run_bench(cfg, out, json_path)


@cli.command()
@_BUDGET
@_EXPERTS
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="KD steps per method.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--out", default="out/demo", show_default=True)
def demo(budget: float, experts: int, steps: int, batch_size: int, out: str) -> None:
    """The embedded default: `bench --preset mnist-cnn`, one seed, a few minutes on a CPU.

    Real teacher (digit-recognizer-py CNN) on real MNIST: the inheritance plan, then InherNet and the
    matched-size baselines side by side — zero-shot, after KD, parameters, MACs and step time.
    """
    from . import InherConfig
    from . import plan as make_plan
    from .bench import BenchConfig
    from .presets.registry import get_preset

    preset = get_preset("mnist-cnn")
    cfg = InherConfig(budget=_budget_value(budget), experts=experts)
    _print_plan(make_plan(preset.teacher(), cfg, calib=preset.calib(1000)))
    bench_cfg = BenchConfig(
        preset="mnist-cnn", budget=cfg.budget, experts=experts, seeds=(0,), steps=steps, batch_size=batch_size,
        progress=False,
    )
    _run_bench(bench_cfg, out, None)


def _print_plan(plan) -> None:
    table = Table("layer", "kind", "shape", "rank", "params before", "params after", "note")
    for row in plan.layers:
        rank = "" if row.rank is None else f"{row.rank}/{row.max_rank}"
        table.add_row(
            row.name or "(root)", row.kind, row.shape, rank, f"{row.params_before:,}", f"{row.params_after:,}", row.reason
        )
    console.print(table)
    console.print(plan.summary())


def main() -> None:
    """Entry point: clear one-line errors and a non-zero exit on bad input."""
    from .presets.assets import AssetMissingError

    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (ValueError, TypeError, AssetMissingError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
