"""The ``inhernet`` command line: ``demo``, ``presets``, ``plan``, ``bench`` on the presets, and
``compress``, ``train``, ``eval`` on a user's own model and data (loaded by :mod:`inhernet.sources`)."""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import replace
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .config import ALLOCATIONS

# Logs and CI are not terminals: keep tables whole there instead of wrapping them at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)

_BUDGET = click.option(
    "--budget", type=float, default=0.1, show_default=True,
    help="Fraction (0, 1] of the teacher's parameters, or an absolute count if > 1.",
)
_EXPERTS = click.option(
    "--experts", type=click.IntRange(min=1), default=None,
    help="Gated experts h [the model family's default: 1; the published method: 3].",
)
_INIT = click.option("--init", type=click.Choice(["whiten", "svd"]), default="whiten", show_default=True)
_ALLOCATION = click.option(
    "--allocation", type=click.Choice(list(ALLOCATIONS)), default="energy", show_default=True
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


def _prune_value(value: str | None) -> float | str | None:
    """``--prune``: ``auto`` or a share in [0, 1) of the channels."""
    if value is None or value == "auto":
        return value
    try:
        share = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a number", param_hint="--prune") from None
    if not 0 <= share < 1:
        raise click.BadParameter(f"{value} is not a share in [0, 1) of the channels", param_hint="--prune")
    return share


# Errors that bad input causes (an argument, a file, a missing asset): one `error:` line. Anything
# else is a bug and keeps its traceback; `--debug` (or INHERNET_DEBUG=1) keeps it for these too.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
_debug = {"on": False}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="INHERNET_DEBUG",
              help="Show the full traceback of every error, not one line (also INHERNET_DEBUG=1).")
@click.version_option(package_name="inhernet")
def cli(debug: bool) -> None:
    """Compress a pretrained PyTorch model by network inheritance (InherNet).

    Bad input ends with one `error:` line and exit status 2; an internal error shows its traceback
    (exit status 1). `inhernet --debug COMMAND ...` shows the traceback of every error.
    """
    _debug["on"] = debug


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
    stem = f"{cfg.preset}-{cfg.budget}" + ("" if cfg.match == "params" else f"-{cfg.match}")
    json_file = write_json(result, json_path or out_dir / f"{stem}.json")
    png = write_plots(result, out_dir / f"{stem}.png")
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
@click.option("--seed", "seed_list", type=click.IntRange(min=0), multiple=True,
              help="Run only this seed (repeatable), instead of 0..N-1 of --seeds: e.g. one seed per session.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="KD steps (default: one epoch).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Instead of --steps: passes over the whole training split (epochs x batches per epoch steps).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Learning rate of every method (without --tune-lr).")
@click.option("--tune-lr", is_flag=True,
              help="Give each method its best lr of --lr-grid, scored after short runs on a validation split "
              "of the training data (never the test split).")
@click.option("--lr-grid", default="3e-4,1e-3,3e-3", show_default=True, help="Comma-separated lrs for --tune-lr.")
@click.option("--tune-steps", type=click.IntRange(min=1), default=None,
              help="Steps of each tuning run [15% of the steps, 10..1000].")
@click.option("--val-examples", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Validation examples carved from the end of the training split for --tune-lr (at most a fifth).")
@_METHODS
@click.option(
    "--match", type=click.Choice(["params", "macs", "latency"]), default="params", show_default=True,
    help="Equal size in parameters, in multiply-accumulates (--budget is then a share of the teacher's MACs), or "
    "in measured latency of the deployed forms on the first calibration batch (--budget is then a share of "
    "the teacher's latency on this machine; InherNet is sized by InherConfig(latency=...)).",
)
@click.option(
    "--curve-points", type=click.IntRange(min=1), default=10, show_default=True,
    help="Evaluations along each learning curve (fewer: a faster run on a CPU).",
)
@click.option("--out", default="out/bench", show_default=True, help="Directory for the JSON and the plot.")
@click.option("--json", "json_path", default=None, help="Write the JSON here instead of under --out.")
@click.option("--part-dir", default=None, type=click.Path(file_okay=False),
              help="Keep each finished (method, seed) run and each method's lr tuning here as its own JSON; a rerun "
              "with the same configuration skips them, and the result is assembled from the parts.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True, metavar="STEPS",
              help="With --part-dir: save each run's training state every STEPS steps, and continue an interrupted "
              "run from its last checkpoint when rerun (0: no checkpoints).")
@click.option("--prune-importance", type=click.Choice(["l2", "taylor"]), default=None,
              help="Channel importance of prune-kd: L2 magnitude, or Taylor (gradient x weight on a calibration batch) "
              "[the teacher family's: taylor for causal LMs, l2 otherwise].")
@click.option("--reference", default="inhernet", show_default=True,
              help="The method whose model sizes the baselines, e.g. inhernet-prune where a latency budget is out of "
              "reach of rank cuts alone.")
@click.option("--full-test", is_flag=True,
              help="Measure on the preset's whole test split where its default is a subset (fashion-effnet: all "
              "10,000 images instead of 500).")
@click.option("--drop-blocks", type=click.FloatRange(min=0, max=1), default=None, metavar="SHARE",
              help="InherConfig(drop_blocks=SHARE) for the InherNet rows: the share of the parameter cut paid with "
              "whole transformer blocks (0: keep every block; 1: as many as fit) [the family's: 1 for causal LMs].")
def bench(
    preset: str, budget: float, experts: int, seeds: int, seed_list: tuple[int, ...], steps: int | None,
    epochs: int | None, batch_size: int, lr: float, tune_lr: bool, lr_grid: str, tune_steps: int | None,
    val_examples: int, methods: str | None, match: str, curve_points: int, out: str, json_path: str | None,
    part_dir: str | None, checkpoint_every: int, prune_importance: str | None, reference: str, full_test: bool,
    drop_blocks: float | None,
) -> None:
    """InherNet against matched-size baselines on a preset: same data, steps, optimiser, seeds.

    \b
    A long benchmark in parts (one method and seed per session, then the assembled table):
      inhernet bench --preset mnist-cnn --budget 0.1 --epochs 5 --tune-lr --seed 0 --methods prune-kd \\
          --part-dir benchmarks/parts/mnist-cnn-0.1 --json /tmp/one-part.json
      inhernet bench --preset mnist-cnn --budget 0.1 --epochs 5 --tune-lr --seeds 3 \\
          --part-dir benchmarks/parts/mnist-cnn-0.1 --out benchmarks/results
    """
    from .bench import BenchConfig
    from .presets.registry import get_preset

    get_preset(preset)  # fail fast on an unknown name
    if steps is not None and epochs is not None:
        raise click.BadParameter("give --steps or --epochs, not both", param_hint="--epochs")
    chosen = tuple(m.strip() for m in methods.split(",")) if methods else None
    try:
        grid = tuple(float(v) for v in lr_grid.split(","))
    except ValueError:
        raise click.BadParameter(f"{lr_grid!r} is not a comma-separated list of numbers", param_hint="--lr-grid") from None
    cfg = BenchConfig(
        preset=preset, budget=_budget_value(budget), experts=experts,
        seeds=tuple(sorted(set(seed_list))) or tuple(range(seeds)), steps=steps, epochs=epochs,
        batch_size=batch_size, lr=lr, methods=chosen, match=match, curve_points=curve_points, tune_lr=tune_lr,
        lr_grid=grid, tune_steps=tune_steps, val_examples=val_examples, part_dir=part_dir,
        checkpoint_every=checkpoint_every, prune_importance=prune_importance, full_test=full_test, reference=reference,
        inherit_overrides={} if drop_blocks is None else {"drop_blocks": drop_blocks},
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
    console.print(
        f"{steps} KD steps is early training, where starting from the teacher is worth most; after 5 epochs "
        "every method on this preset ends within 0.12 points and the kd-student highest (BENCHMARKS.md, "
        "'Which method should I use?').",
        highlight=False,
    )


# -- your own model and data: compress / train / eval -------------------------------------------------
def _options(*decorators):
    """Apply several click decorators as one, in reading order."""

    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


_MODEL_SPEC = _options(
    click.option("--weights", type=click.Path(dir_okay=False), default=None,
                 help="Trained weights of a torchvision/timm model: a .safetensors or .pth state dict."),
    click.option("--task", type=click.Choice(["classify", "lm"]), default=None,
                 help="Hugging Face head: sequence classification or causal LM (default: from config.json)."),
    click.option("--num-classes", type=click.IntRange(min=1), default=None,
                 help="Classifier outputs [torchvision/timm, or a Hugging Face checkpoint without a classification head: "
                 "the data's class count; Hugging Face classifiers: config.json's num_labels]."),
)
_PREP = ("image_size", "mean", "std", "max_length", "text_column", "label_column", "encoding")


def _collect_prep(f):
    """Pass the data preparation options given on the command line to ``f`` as one ``prep`` dict."""

    @functools.wraps(f)
    def command(**kwargs):
        given = {name: kwargs.pop(name) for name in _PREP}
        return f(prep={k: v for k, v in given.items() if v not in (None, ())}, **kwargs)  # unset nargs=3: ()

    return command


# Preparation options default to None: compress fills in DataOptions' defaults, train and eval what
# compress recorded.
_DATA = _options(
    click.option("--data", type=click.Path(), required=True,
                 help="An image folder (ROOT/CLASS/img.png) or a CSV/TSV/JSONL text file."),
    click.option("--image-size", type=click.IntRange(min=1), default=None,
                 help="Images: shorter side resized to this, then centre-cropped square [224]."),
    click.option("--mean", type=float, nargs=3, default=None, help="Images: per-channel mean [ImageNet's]."),
    click.option("--std", type=float, nargs=3, default=None, help="Images: per-channel std [ImageNet's]."),
    click.option("--max-length", type=click.IntRange(min=2), default=None,
                 help="Text: tokens per example, padded/truncated [128, at most the model's positions]."),
    click.option("--text-column", default=None, help="Text: column of the text [text]."),
    click.option("--label-column", default=None, help="Text: column of the class label [label]."),
    click.option("--encoding", default=None, help="Text: the file's encoding [utf-8]."),
    click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the train/validation split and of the run."),
    _collect_prep,
)
_VAL_FRACTION = click.option(
    "--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
    help="Share of the data held out for validation (the same split for the same --seed).",
)


@cli.command()
@click.argument("model")
@_MODEL_SPEC
@_DATA
@_VAL_FRACTION
@_BUDGET
@_EXPERTS
@_INIT
@_ALLOCATION
@click.option("--exclude", multiple=True, help="Module name pattern to keep dense (repeatable), e.g. fc.")
@click.option("--calib-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Training examples whose layer inputs whiten the SVDs (--init whiten).")
@click.option("--prune", "prune", default=None, metavar="auto|FRACTION", callback=lambda _c, _p, v: _prune_value(v),
              help="Prune this share of the channels with Torch-Pruning first, then inherit at the same budget; "
              "'auto' chooses the share among candidates found from the budget, by the KL to the teacher after "
              "a few KD steps on the calibration examples (scored on a held-out quarter of them).")
@click.option("--drop-blocks", type=click.FloatRange(min=0, max=1), default=None, metavar="SHARE",
              help="Pay this share of the parameter cut by dropping whole transformer blocks (lowest Block Influence "
              "on the calibration examples), the rest by rank cuts. Default: the model family's (1, as many "
              "blocks as fit, for causal LMs; none otherwise); 0: none.")
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Directory to save to.")
def compress(
    model: str, weights: str | None, task: str | None, num_classes: int | None, data: str, prep: dict[str, Any],
    batch_size: int, seed: int, val_fraction: float, budget: float, experts: int, init: str, allocation: str, exclude: tuple[str, ...],
    calib_size: int, prune: float | str | None, drop_blocks: float | None, out: str,
) -> None:
    """Compress your own MODEL to a parameter budget and save it to --out.

    MODEL is torchvision:NAME or timm:NAME (built offline; trained weights from --weights) or a
    Hugging Face model directory. Calibration uses the training split of --data only. --out gets
    inhernet.json + model-<hash>.safetensors (inhernet.load) and source.json, which records MODEL and the
    data preparation for `inhernet train` and `inhernet eval`.

    \b
    Example:
      inhernet compress torchvision:resnet18 --weights r18-pets.safetensors \\
          --data pets/train --image-size 224 --budget 0.25 --out out/r18-pets
      inhernet compress ./my-bert --data reviews.csv --budget 0.5 --out out/bert
    """
    from . import InherConfig, inherit, save
    from .sources import (
        DataOptions,
        Source,
        calibration_batches,
        has_trained_head,
        open_source,
        parse_model_spec,
        split,
        write_source,
    )

    cfg = InherConfig(
        budget=_budget_value(budget), experts=experts, init=init, allocation=allocation, exclude=exclude, seed=seed,
        prune=prune, drop_blocks=drop_blocks,
    )
    spec = parse_model_spec(model, weights=weights, task=task, num_classes=num_classes)
    options = DataOptions().updated(**prep)
    opened = open_source(Source(spec, options), data)
    if spec.library != "hf" and spec.weights is None:
        click.echo(f"warning: no --weights: {spec} is randomly initialised, so there is little to inherit", err=True)
    elif not has_trained_head(spec):
        click.echo(
            f"warning: config.json of {spec.name} names no {spec.task} architecture: its head is new and random, "
            "so the teacher's predictions are too; fine-tune the teacher on your task first", err=True,
        )
    train_set, _ = split(opened.data.dataset, val_fraction, seed)
    # whitening reads the layers' inputs; pruning traces the model on the first batch and scores on all;
    # dropping blocks ranks them on all
    needs_calib = init == "whiten" or prune is not None or bool(cfg.resolved(opened.teacher).drop_blocks)
    calib = calibration_batches(train_set, calib_size, batch_size) if needs_calib else None
    student = inherit(opened.teacher, cfg, calib=calib, progress=sys.stderr.isatty())
    _print_plan(student.inhernet_plan)
    save(student, out)
    write_source(out, opened.source)
    console.print(f"saved to {out}; next: inhernet train {out} --data {data}", highlight=False)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@_DATA
@_VAL_FRACTION
@click.option("--steps", type=click.IntRange(min=1), default=500, show_default=True, help="Optimiser steps.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="KD softmax temperature.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Weight of the KD term (1 - alpha: the labels' cross-entropy).")
@click.option("--precision", default="32", show_default=True, help="Lightning precision: 32, bf16-mixed, 16-mixed...")
@click.option("--accelerator", default="auto", show_default=True, help="Lightning accelerator: auto, cpu, gpu...")
@click.option("--val-every", type=click.IntRange(min=0), default=None, help="Validate every N steps [steps/10].")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="CSV logs, checkpoints and history.json [a temporary directory].")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=None,
              help="Checkpoint every N steps [steps/10 with --log-dir, else never].")
@click.option("--resume", default=None, help="Continue from 'last' (the last checkpoint in --log-dir) or a .ckpt.")
@click.option("--save-to", type=click.Path(file_okay=False), default=None, help="Save here instead of DIRECTORY.")
@click.option("--progress/--no-progress", default=None, help="Progress bar [on in a terminal].")
def train(
    directory: str, data: str, prep: dict[str, Any], batch_size: int, seed: int, val_fraction: float, steps: int,
    lr: float, temperature: float, alpha: float, precision: str, accelerator: str, val_every: int | None, log_dir: str | None, checkpoint_every: int | None,
    resume: str | None, save_to: str | None, progress: bool | None,
) -> None:
    """Fine-tune a compressed DIRECTORY by distillation from its teacher, on your data.

    The teacher is rebuilt from DIRECTORY/source.json, the student with inhernet.load; both see the
    data prepared as at compression unless overridden. The trained student replaces DIRECTORY's
    weights (or goes to --save-to). Checkpoints are Lightning .ckpt files: resume only your own.

    \b
    Example:
      inhernet train out/r18-pets --data pets/train --steps 2000 --lr 5e-4 --log-dir out/r18-log
      inhernet train out/r18-pets --data pets/train --steps 2000 --log-dir out/r18-log --resume last
    """
    import copy

    from . import DistillConfig, distill, load, save
    from .sources import make_loader, open_source, read_source, split, write_source

    source = read_source(directory)
    options = source.data.updated(**prep)
    opened = open_source(replace(source, data=options), data)
    student = load(directory, base=copy.deepcopy(opened.teacher))
    train_set, val_set = split(opened.data.dataset, val_fraction, seed)
    if checkpoint_every is None:
        checkpoint_every = max(1, steps // 10) if log_dir else 0
    cfg = DistillConfig(
        steps=steps, lr=lr, temperature=temperature, alpha=alpha, precision=precision, accelerator=accelerator,
        seed=seed, metric=opened.data.metric, val_every=val_every, log_dir=log_dir,
        checkpoint_every=checkpoint_every, resume=resume,
        progress=sys.stdout.isatty() if progress is None else progress,
    )
    train_loader = make_loader(train_set, batch_size, shuffle=True, seed=seed)
    val_loader = make_loader(val_set, batch_size) if val_set is not None else None
    history = distill(student, opened.teacher, train_loader, val_loader, cfg)
    target = save_to or directory
    save(student, target)
    write_source(target, opened.source)
    curve = history["curve"]
    if curve:
        console.print(
            f"validation {history['metric']}: {curve[0][1]:.4f} at step {curve[0][0]} -> "
            f"{curve[-1][1]:.4f} at step {curve[-1][0]}", highlight=False,
        )
    console.print(
        f"trained {history['steps']} steps ({history['sec_per_step'] * 1000:.0f} ms/step), logs in "
        f"{history['log_dir']}; saved to {target}", highlight=False,
    )


@cli.command("eval")
@click.argument("model")
@_MODEL_SPEC
@_DATA
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Evaluate only the validation split `train` used with this fraction and --seed (0: all data).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the rows here.")
@click.option("--compact", "with_compact", is_flag=True, default=False,
              help="Also evaluate the deployable form (inhernet.compact) and time every model at batch 1 "
                   "(latency_ms: median of interleaved repetitions, this device and thread count).")
@click.option("--prompt", "prompts", multiple=True,
              help="Causal LMs: a prompt to continue greedily with every model (repeatable; default: the "
                   "first words of the first three texts of --data).")
@click.option("--new-tokens", type=click.IntRange(0), default=20, show_default=True,
              help="Causal LMs: tokens of each greedy continuation (0: none).")
def eval_command(
    model: str, weights: str | None, task: str | None, num_classes: int | None, data: str, prep: dict[str, Any],
    batch_size: int, seed: int, val_fraction: float, json_path: str | None, with_compact: bool = False,
    prompts: tuple[str, ...] = (), new_tokens: int = 20,
) -> None:
    """Metric, parameters and MACs of a compressed MODEL beside its teacher's, on your data.

    MODEL is a directory written by `inhernet compress` / `train` (its teacher is rebuilt from
    source.json), or a plain model spec as `compress` takes, evaluated alone. The metric is
    accuracy for classifiers and perplexity for causal LMs; MACs are per example.

    \b
    Example:
      inhernet eval out/r18-pets --data pets/test
      inhernet eval out/r18-pets --data pets/train --val-fraction 0.1   # train's held-out split
      inhernet eval out/r18-pets --data pets/test --compact             # + the compact form, latencies
    """
    import copy
    from pathlib import Path

    from . import load
    from .serialization import CONFIG_NAME
    from .sources import DataOptions, Source, open_source, parse_model_spec, read_source, split

    if (Path(model) / CONFIG_NAME).is_file():
        given = [f for f, v in (("--weights", weights), ("--task", task), ("--num-classes", num_classes)) if v]
        if given:
            raise ValueError(f"{', '.join(given)} describe a model spec; {model}'s teacher is recorded in its source.json")
        source = read_source(model)
        options = source.data.updated(**prep)
        opened = open_source(replace(source, data=options), data)
        models = {"teacher": opened.teacher, "inhernet": load(model, base=copy.deepcopy(opened.teacher))}
        spec = source.model
    else:
        spec = parse_model_spec(model, weights=weights, task=task, num_classes=num_classes)
        options = DataOptions().updated(**prep)
        opened = open_source(Source(spec, options), data)
        models = {str(spec): opened.teacher}
    dataset = opened.data.dataset if val_fraction == 0 else split(opened.data.dataset, val_fraction, seed)[1]
    if with_compact:
        _add_compact(models, dataset, batch_size)
    rows = _measure(models, dataset, batch_size, opened.data.metric)
    if with_compact:
        _add_latency(models, rows, dataset)
    _print_measures(rows, opened.data.metric)
    report: dict[str, Any] = {"model": model, "data": data, "metric": opened.data.metric, "examples": len(dataset),
                              "models": rows}
    if opened.data.metric == "perplexity" and new_tokens:
        report["continuations"] = _continuations(models, spec, dataset, prompts, new_tokens)
    if json_path:
        from .bench import write_json

        write_json(report, json_path)


def _continuations(
    models: dict[str, Any], spec: Any, dataset: Any, prompts: tuple[str, ...], new_tokens: int
) -> list[dict[str, str]]:
    """Every model's greedy continuation of each prompt, printed side by side; the JSON rows."""
    from .generation import greedy_continuations
    from .sources import load_tokenizer

    tokenizer = load_tokenizer(spec)
    if not prompts:  # the first eight tokens of the first three texts: fixed for a given data file
        firsts = [dataset[i] for i in range(min(3, len(dataset)))]
        prompts = tuple(
            tokenizer.decode(e["input_ids"][e["attention_mask"].bool()][:8], skip_special_tokens=True) for e in firsts
        )
    outputs = {name: greedy_continuations(m, tokenizer, prompts, new_tokens) for name, m in models.items()}
    rows = [{"prompt": p, **{name: outputs[name][i] for name in models}} for i, p in enumerate(prompts)]
    table = Table("prompt", *models, title=f"greedy continuations ({new_tokens} tokens)")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    return rows


def _measure(models: dict[str, Any], dataset: Any, batch_size: int, metric: str) -> list[dict[str, Any]]:
    """Parameters, MACs of one example and ``metric`` over ``dataset`` of each model."""
    from . import count_macs, evaluate
    from .sources import make_loader

    loader = make_loader(dataset, batch_size)
    example = next(iter(make_loader(dataset, 1)))
    return [
        {"name": name, "params": sum(p.numel() for p in m.parameters()), "macs": count_macs(m, example),
         metric: evaluate(m, loader, metric)[metric]}
        for name, m in models.items()
    ]


def _add_compact(models: dict[str, Any], dataset: Any, batch_size: int) -> None:
    """``models["inhernet-compact"]``: the deployable form of ``models["inhernet"]`` (if any), for batch 1."""
    import itertools

    from .deploy import compact
    from .sources import make_loader

    if "inhernet" not in models:
        return
    calib = list(itertools.islice(iter(make_loader(dataset, batch_size)), 8))
    example = next(iter(make_loader(dataset, 1)))
    models["inhernet-compact"] = compact(models["inhernet"], calib, example=example)


def _add_latency(models: dict[str, Any], rows: list[dict[str, Any]], dataset: Any) -> None:
    """Each row's ``latency_ms``: one example's forward pass, median of interleaved repetitions."""
    from .deploy.costs import measure_latency
    from .sources import make_loader

    example = next(iter(make_loader(dataset, 1)))
    for row, seconds in zip(rows, measure_latency(list(models.values()), example), strict=True):
        row["latency_ms"] = seconds * 1e3


def _print_measures(rows: list[dict[str, Any]], metric: str) -> None:
    reference = rows[0]  # the teacher: the others are shown as a share of it
    timed = "latency_ms" in reference
    table = Table("model", "params", "MACs / example", metric, *(["ms / example (batch 1)"] if timed else []))
    for row in rows:
        share = "" if row is reference else f" ({row['params'] / reference['params']:.1%})"
        macs = "" if row is reference or not reference["macs"] else f" ({row['macs'] / reference['macs']:.1%})"
        latency = []
        if timed:
            ratio = "" if row is reference else f" ({row['latency_ms'] / reference['latency_ms']:.2f}x)"
            latency = [f"{row['latency_ms']:.3f}{ratio}"]
        table.add_row(row["name"], f"{row['params']:,}{share}", f"{row['macs']:,}{macs}", f"{row[metric]:.4f}", *latency)
    console.print(table)


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
    """Entry point: one-line errors and exit status 2 on bad input; tracebacks for bugs and with --debug."""
    _debug["on"] = False
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as err:
        # One line, like every other error here; `--help` shows the usage.
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except USER_ERRORS as err:  # AssetMissingError is a FileNotFoundError
        if _debug["on"] or os.environ.get("INHERNET_DEBUG", "") not in ("", "0"):
            raise
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
