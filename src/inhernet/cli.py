"""The ``inhernet`` command line: ``demo``, ``presets``, ``plan``."""

from __future__ import annotations

import sys
import time

import click
from rich.console import Console
from rich.table import Table

console = Console()

_BUDGET = click.option(
    "--budget", type=float, default=0.25, show_default=True,
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


@cli.command()
@_BUDGET
@_EXPERTS
@_ALLOCATION
@click.option("--calib-size", default=1000, show_default=True, help="Calibration images for whitening.")
def demo(budget: float, experts: int, allocation: str, calib_size: int) -> None:
    """The embedded default: inherit the real MNIST teacher and measure it on real MNIST.

    Prints the plan, then the teacher's test accuracy and the inherited model's zero-shot accuracy
    (no fine-tuning yet) with plain and whitened SVD init.
    """
    from . import InherConfig, evaluate, inherit
    from .presets.registry import get_preset

    start = time.perf_counter()
    p = get_preset("mnist-cnn")
    teacher = p.teacher()
    _, test = p.data()
    calib = p.calib(calib_size)
    teacher_acc = evaluate(teacher, test)["accuracy"]
    table = Table("model", "init", "params", "% of teacher", "test accuracy", title=f"mnist-cnn at budget {budget}")
    teacher_params = sum(t.numel() for t in teacher.parameters())
    table.add_row("teacher", "-", f"{teacher_params:,}", "100.0%", f"{teacher_acc:.2%}")
    for init in ("svd", "whiten"):
        cfg = InherConfig(budget=_budget_value(budget), experts=experts, init=init, allocation=allocation)
        student = inherit(teacher, cfg, calib=calib if init == "whiten" else None)
        plan = student.inhernet_plan
        if init == "whiten":
            _print_plan(plan)
        acc = evaluate(student, test)["accuracy"]
        table.add_row("inhernet (zero-shot)", init, f"{plan.total_params:,}", f"{plan.ratio:.1%}", f"{acc:.2%}")
    console.print(table)
    console.print(f"done in {time.perf_counter() - start:.1f} s")


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
