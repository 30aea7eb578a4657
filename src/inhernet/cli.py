"""The ``inhernet`` command line: ``plan``, ``compress``, ``train`` and ``eval`` on a user's own model and
data (loaded by :mod:`inhernet.sources`). The benchmark harness has its own: ``inhernet-bench``."""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ._atomic import atomic_write
from .config import ALLOCATIONS

# Logs and CI are not terminals: keep tables whole there instead of wrapping them at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)

BUDGET = click.option(
    "--budget", type=float, default=0.1, show_default=True,
    help="Fraction (0, 1] of the teacher's parameters, or an absolute count if > 1.",
)
EXPERTS = click.option(
    "--experts", type=click.IntRange(min=1), default=None,
    help="Gated experts h [the model family's default: 1; the published method: 3].",
)
INIT = click.option("--init", type=click.Choice(["whiten", "svd"]), default="whiten", show_default=True)
ALLOCATION = click.option(
    "--allocation", type=click.Choice(list(ALLOCATIONS)), default="energy", show_default=True
)


def budget_value(budget: float) -> float | int:
    if budget > 1:
        if budget != int(budget):
            raise click.BadParameter("an absolute budget must be a whole parameter count", param_hint="--budget")
        return int(budget)
    if budget <= 0:
        raise click.BadParameter("must be a fraction in (0, 1] or a parameter count", param_hint="--budget")
    return budget


def _prune_value(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | str | None:
    """``--prune``'s callback: ``auto`` or a share in [0, 1) of the channels."""
    if value is None or value == "auto":
        return value
    try:
        share = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a number", param_hint="--prune") from None
    if not 0 <= share < 1:
        raise click.BadParameter(f"{value} is not a share in [0, 1) of the channels", param_hint="--prune")
    return share


# Errors that bad input causes: one `error:` line (a traceback with `--debug`); others are bugs.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
_debug = {"on": False}

#: ``--debug`` on a command group (``inhernet`` and ``inhernet-bench``): tracebacks for every error.
debug_option = click.option(
    "--debug", is_flag=True, envvar="INHERNET_DEBUG", expose_value=False, is_eager=True,
    callback=lambda _ctx, _param, value: _debug.update(on=value),
    help="Show the full traceback of every error, not one line (also INHERNET_DEBUG=1).",
)


def _set_verbose(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:  # read by the library (inhernet.distillation.train.verbose), in this process and its children
        os.environ["INHERNET_VERBOSE"] = "1"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@debug_option
@click.option(
    "--verbose", is_flag=True, envvar="INHERNET_VERBOSE", expose_value=False, callback=_set_verbose, is_eager=True,
    help="Show the info messages, tips and progress bars of Lightning and transformers (also INHERNET_VERBOSE=1).",
)
@click.version_option(package_name="inhernet")
def cli() -> None:
    """Compress a pretrained PyTorch model by network inheritance (InherNet).

    Bad input ends with one `error:` line and exit status 2; an internal error shows its traceback
    (exit status 1). `inhernet --debug COMMAND ...` shows the traceback of every error;
    `inhernet --verbose COMMAND ...` the messages of the libraries underneath.
    """


def _options(*decorators):
    """Apply several click decorators as one, in reading order."""
    return lambda f: functools.reduce(lambda g, decorator: decorator(g), reversed(decorators), f)


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


# Preparation options default to None: DataOptions' defaults in compress, what it recorded after.
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


# What to inherit: the options `plan` and `compress` share.
_INHERIT = _options(
    click.argument("model"),
    _MODEL_SPEC,
    _DATA,
    _VAL_FRACTION,
    BUDGET,
    EXPERTS,
    INIT,
    ALLOCATION,
    click.option("--exclude", multiple=True, help="Module name pattern to keep dense (repeatable), e.g. fc."),
    click.option("--calib-size", type=click.IntRange(min=1), default=256, show_default=True,
                 help="Training examples whose layer inputs whiten the SVDs (--init whiten)."),
    click.option("--prune", "prune", default=None, metavar="auto|FRACTION", callback=_prune_value,
                 help="Prune this share of the channels with Torch-Pruning first, then inherit at the same budget; "
                 "'auto' chooses the share among candidates found from the budget, by the KL to the teacher after "
                 "a few KD steps on the calibration examples (scored on a held-out quarter of them)."),
    click.option("--drop-blocks", type=click.FloatRange(min=0, max=1), default=None, metavar="SHARE",
                 help="Pay this share of the parameter cut by dropping whole transformer blocks (lowest Block "
                 "Influence on the calibration examples), the rest by rank cuts. Default: the model family's (1, as "
                 "many blocks as fit, for causal LMs; none otherwise); 0: none."),
)


def _inheritance(
    model: str, weights: str | None, task: str | None, num_classes: int | None, data: str, prep: dict[str, Any],
    batch_size: int, seed: int, val_fraction: float, budget: float, experts: int | None, init: str,
    allocation: str, exclude: tuple[str, ...], calib_size: int, prune: float | str | None,
    drop_blocks: float | None,
) -> tuple[Any, Any, list[Any] | None]:
    """The teacher opened from MODEL, the config the options describe, and the calibration batches it needs
    (from the training split of --data only)."""
    from . import InherConfig
    from .sources import (
        DataOptions,
        Source,
        calibration_batches,
        has_trained_head,
        open_source,
        parse_model_spec,
        split,
    )

    cfg = InherConfig(
        budget=budget_value(budget), experts=experts, init=init, allocation=allocation, exclude=exclude, seed=seed,
        prune=prune, drop_blocks=drop_blocks,
    )
    spec = parse_model_spec(model, weights=weights, task=task, num_classes=num_classes)
    opened = open_source(Source(spec, DataOptions().updated(**prep)), data)
    if spec.library != "hf" and spec.weights is None:
        click.echo(f"warning: no --weights: {spec} is randomly initialised, so there is little to inherit", err=True)
    elif not has_trained_head(spec):
        click.echo(
            f"warning: config.json of {spec.name} names no {spec.task} architecture: its head is new and random, "
            "so the teacher's predictions are too; fine-tune the teacher on your task first", err=True,
        )
    train_set, _ = split(opened.data.dataset, val_fraction, seed)
    # whitening reads the layers' inputs, pruning and dropping blocks score on the batches
    needs_calib = init == "whiten" or prune is not None or bool(cfg.resolved(opened.teacher).drop_blocks)
    return opened, cfg, (calibration_batches(train_set, calib_size, batch_size) if needs_calib else None)


@cli.command("plan")
@_INHERIT
def plan_command(**options: Any) -> None:
    """Print the per-layer plan of MODEL at a budget without building it (the options of `compress`).

    \b
    Example:
      inhernet plan torchvision:resnet18 --weights r18-pets.safetensors --data pets/train --budget 0.25
    """
    from . import plan

    opened, cfg, calib = _inheritance(**options)
    print_plan(plan(opened.teacher, cfg, calib=calib))


@cli.command()
@_INHERIT
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Directory to save to.")
def compress(out: str, **options: Any) -> None:
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
    from . import inherit, save
    from .sources import write_source

    opened, cfg, calib = _inheritance(**options)
    with _layer_lines(not sys.stderr.isatty()):  # a bar on a terminal, else a line per layer factorised
        student = inherit(opened.teacher, cfg, calib=calib, progress=sys.stderr.isatty())
    print_plan(student.inhernet_plan)
    save(student, out)
    write_source(out, opened.source)
    console.print(f"saved to {out}; next: inhernet train {out} --data {options['data']}", highlight=False)


@contextlib.contextmanager
def _layer_lines(on: bool) -> Iterator[None]:
    """The library's progress lines (one per layer factorised) on stderr inside the block, when ``on``."""
    log = logging.getLogger("inhernet")
    handler, level = logging.StreamHandler(sys.stderr), log.level
    handler.setFormatter(logging.Formatter("%(message)s"))
    if on:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@_DATA
@_VAL_FRACTION
@click.option("--steps", type=click.IntRange(min=1), default=500, show_default=True, help="Optimiser steps.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate [the student family's: inhernet.distillation.defaults.FAMILY_LR].")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="KD softmax temperature.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Weight of the KD term (1 - alpha: the labels' cross-entropy).")
@click.option("--precision", default="32", show_default=True, help="Lightning precision: 32, bf16-mixed, 16-mixed...")
@click.option("--accelerator", default="auto", show_default=True, help="Lightning accelerator: auto, cpu, gpu...")
@click.option("--val-every", type=click.IntRange(min=0), default=None, help="Validate every N steps [steps/10].")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="CSV logs, checkpoints and history.json [DIRECTORY-train, beside DIRECTORY].")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=None,
              help="Save LOG_DIR/checkpoints/last.ckpt every N steps [steps/10; 0: only on Ctrl-C].")
@click.option("--keep-checkpoints", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also keep the checkpoints of the N latest checkpoint steps (last.ckpt holds the best weights).")
@click.option("--resume", default=None, help="Continue from 'last' (the last checkpoint in --log-dir) or a .ckpt.")
@click.option("--restart", is_flag=True, help="Delete the checkpoints of an earlier run in --log-dir and start over.")
@click.option("--save-last", is_flag=True,
              help="Save the last step's weights, even if worse [the best validated weights, or the input model].")
@click.option("--save-to", type=click.Path(file_okay=False), default=None, help="Save here instead of DIRECTORY.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A progress bar on a terminal, a line every tenth of the run otherwise.")
def train(
    directory: str, data: str, prep: dict[str, Any], batch_size: int, seed: int, val_fraction: float, steps: int,
    lr: float | None, temperature: float, alpha: float, precision: str, accelerator: str, val_every: int | None,
    log_dir: str | None, checkpoint_every: int | None, keep_checkpoints: int, resume: str | None, restart: bool,
    save_last: bool, save_to: str | None, progress: bool,
) -> None:
    """Fine-tune a compressed DIRECTORY by distillation from its teacher, on your data.

    The teacher is rebuilt from DIRECTORY/source.json, the student with inhernet.load; both see the
    data prepared as at compression unless overridden. The student with the best validation score
    replaces DIRECTORY's weights (or goes to --save-to); when training only made it worse, the input
    model stays. Ctrl-C saves a checkpoint in --log-dir: `--resume last` continues. Checkpoints are
    Lightning .ckpt files: resume only your own.

    \b
    Example:
      inhernet train out/r18-pets --data pets/train --steps 2000 --lr 5e-4
      inhernet train out/r18-pets --data pets/train --steps 2000 --resume last
    """
    from . import DistillConfig, distill, load
    from .distillation.train import Interrupted
    from .sources import make_loader, open_source, read_source, split

    log_dir = _train_log_dir(directory, log_dir, resume, restart)
    source = read_source(directory)
    opened = open_source(replace(source, data=source.data.updated(**prep)), data)
    student = load(directory, base=copy.deepcopy(opened.teacher))
    train_set, val_set = split(opened.data.dataset, val_fraction, seed)
    cfg = DistillConfig(
        steps=steps, lr=_train_lr(student, lr), temperature=temperature, alpha=alpha, precision=precision, accelerator=accelerator,
        seed=seed, metric=opened.data.metric, val_every=val_every, log_dir=log_dir,
        checkpoint_every=max(1, steps // 10) if checkpoint_every is None else checkpoint_every,
        keep_checkpoints=keep_checkpoints, resume=resume, progress=progress,
        keep="last" if save_last or val_set is None else "best",
    )
    train_loader = make_loader(train_set, batch_size, shuffle=True, seed=seed)
    val_loader = make_loader(val_set, batch_size) if val_set is not None else None
    try:
        history = distill(student, opened.teacher, train_loader, val_loader, cfg)
    except Interrupted as stop:  # Ctrl-C: a checkpoint was saved at the end of the step
        click.echo(f"interrupted at step {stop.step}; `{_rerun_with_resume()}` continues", err=True)
        sys.exit(130)
    _save_trained(student, history, directory, save_to or directory, opened.source)


def _train_lr(student: Any, lr: float | None) -> float:
    """``--lr``, or the student family's default, said in one line."""
    from .distillation.defaults import default_lr

    if lr is not None:
        return lr
    lr, family = default_lr(student)
    mantissa, exponent = f"{lr:e}".split("e")  # 1e-4, not 0.0001
    click.echo(f"lr {mantissa.rstrip('0').rstrip('.')}e{int(exponent)} (the {family} family's default; --lr to change)")
    return lr


def _train_log_dir(directory: str, log_dir: str | None, resume: str | None, restart: bool) -> str:
    """``--log-dir`` (default: DIRECTORY-train beside DIRECTORY), once a rerun over its checkpoints is settled:
    resumed (``--resume``), cleared (``--restart``) or refused."""
    path = Path(log_dir) if log_dir else Path(directory.rstrip("/\\") + "-train")
    checkpoints = path / "checkpoints"
    if resume is not None and restart:
        raise click.UsageError("--resume continues the run in --log-dir, --restart deletes it: give one")
    if restart:
        shutil.rmtree(checkpoints, ignore_errors=True)
    elif resume is None and any(checkpoints.glob("*.ckpt")):
        raise click.UsageError(
            f"{path} holds the checkpoints of an earlier run: add --resume last to continue it, or --restart to "
            "start over"
        )
    return str(path)


def _rerun_with_resume() -> str:
    """The command line being run, with ``--resume last`` (instead of any --resume / --restart)."""
    import shlex

    args, given = [], iter(sys.argv[1:])
    for arg in given:
        if arg == "--resume":
            next(given, None)  # its value
        elif arg != "--restart" and not arg.startswith("--resume="):
            args.append(arg)
    return shlex.join(["inhernet", *args, "--resume", "last"])


def _save_trained(student: Any, history: dict[str, Any], directory: str, target: str, source: Any) -> None:
    """Save the trained student to ``target`` (unless it is the untrained one, already in DIRECTORY) and report."""
    from . import save
    from .sources import write_source

    curve, metric, best = history["curve"], history["metric"], history["best"]
    trained = [value for step, value in curve if step > 0]
    worse = best is not None and best[0] == 0 and bool(trained)  # every trained point below the input model
    if worse:
        after = min(trained) if metric == "perplexity" else max(trained)
        kept = f"kept the input model in {directory}" if target == directory else f"saved the input model to {target}"
        click.echo(f"training made validation {metric} worse ({curve[0][1]:.4f} before, at best {after:.4f} after); "
                   f"{kept}")
    elif curve:
        end = best or curve[-1]
        click.echo(f"validation {metric}: {curve[0][1]:.4f} at step {curve[0][0]} -> {end[1]:.4f} at step {end[0]} "
                   f"({'the best' if best else 'the last'})")
    saved = ""
    if not (worse and target == directory):
        save(student, target)
        write_source(target, source)
        saved = f", saved to {target}"
    used = sum(f.stat().st_size for f in Path(history["log_dir"]).rglob("*") if f.is_file())
    click.echo(f"trained {history['steps']} steps ({history['sec_per_step'] * 1000:.0f} ms/step){saved}; "
               f"logs and checkpoints in {history['log_dir']} ({used / 1e6:.1f} MB)")


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
@click.option("--rank-multiple", type=click.IntRange(1), default=None,
              help="With --compact: round ranks to multiples of this where that changes no output (down where "
                   "free, up where the budget allows; 1: exact ranks). Default 8.")
@click.option("--prompt", "prompts", multiple=True,
              help="Causal LMs: a prompt to continue greedily with every model (repeatable; default: the "
                   "first words of the first three texts of --data).")
@click.option("--new-tokens", type=click.IntRange(0), default=20, show_default=True,
              help="Causal LMs: tokens of each greedy continuation (0: none).")
def eval_command(
    model: str, weights: str | None, task: str | None, num_classes: int | None, data: str, prep: dict[str, Any],
    batch_size: int, seed: int, val_fraction: float, json_path: str | None, with_compact: bool = False,
    prompts: tuple[str, ...] = (), new_tokens: int = 20, rank_multiple: int | None = None,
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
    from . import load
    from .costs.table import measure_latency
    from .serialization import CONFIG_NAME
    from .sources import DataOptions, Source, make_loader, open_source, parse_model_spec, read_source, split

    if (Path(model) / CONFIG_NAME).is_file():
        given = [f for f, v in (("--weights", weights), ("--task", task), ("--num-classes", num_classes)) if v]
        if given:
            raise ValueError(f"{', '.join(given)} describe a model spec; {model}'s teacher is recorded in its source.json")
        source = read_source(model)
        opened = open_source(replace(source, data=source.data.updated(**prep)), data)
        models = {"teacher": opened.teacher, "inhernet": load(model, base=copy.deepcopy(opened.teacher))}
        spec = source.model
    else:
        spec = parse_model_spec(model, weights=weights, task=task, num_classes=num_classes)
        opened = open_source(Source(spec, DataOptions().updated(**prep)), data)
        models = {str(spec): opened.teacher}
    dataset = opened.data.dataset if val_fraction == 0 else split(opened.data.dataset, val_fraction, seed)[1]
    loader = make_loader(dataset, batch_size)
    example = next(iter(make_loader(dataset, 1)))
    if with_compact:
        _add_compact(models, loader, example, rank_multiple)
    rows = _measure(models, loader, example, opened.data.metric)
    if with_compact:  # one example's forward pass, median of interleaved repetitions
        for row, seconds in zip(rows, measure_latency(list(models.values()), example), strict=True):
            row["latency_ms"] = seconds * 1e3
        if "inhernet-compact" in models:
            rows[-1]["output_change"] = models["inhernet-compact"].inhernet_compact["output_change"]
    _print_measures(rows, opened.data.metric)
    report: dict[str, Any] = {"model": model, "data": data, "metric": opened.data.metric, "examples": len(dataset),
                              "models": rows}
    if opened.data.metric == "perplexity" and new_tokens:
        report["continuations"] = _continuations(models, spec, dataset, prompts, new_tokens)
    if json_path:
        atomic_write(json_path, json.dumps(report, indent=2) + "\n")


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


def _measure(models: dict[str, Any], loader: Any, example: Any, metric: str) -> list[dict[str, Any]]:
    """Parameters, MACs of one ``example`` and ``metric`` over ``loader`` of each model."""
    from . import count_macs, evaluate

    return [
        {"name": name, "params": sum(p.numel() for p in m.parameters()), "macs": count_macs(m, example),
         metric: evaluate(m, loader, metric)[metric]}
        for name, m in models.items()
    ]


def _add_compact(models: dict[str, Any], loader: Any, example: Any, rank_multiple: int | None) -> None:
    """``models["inhernet-compact"]``: the deployable form of ``models["inhernet"]`` (if any), for batch 1;
    prints how far its outputs moved from the student's."""
    from .batches import rows_of
    from .deploy import compact

    if "inhernet" not in models:
        return
    calib = list(itertools.islice(loader, 8))
    models["inhernet-compact"] = compacted = compact(models["inhernet"], calib, example=example, rank_multiple=rank_multiple)
    record = compacted.inhernet_compact
    console.print(
        f"compact form: its outputs differ from the student's by {record['output_change']:.1e} at most (relative "
        f"to the largest, on {rows_of(calib[0])} examples); ranks rounded to "
        f"multiples of {record['rank_multiple']} only where that changed no output", highlight=False,
    )


def _print_measures(rows: list[dict[str, Any]], metric: str) -> None:
    reference = rows[0]  # the teacher: the others are shown as a share of it

    def versus(row: dict[str, Any], key: str, fmt: str, unit: str = "") -> str:
        return "" if row is reference or not reference[key] else f" ({row[key] / reference[key]:{fmt}}{unit})"

    timed = "latency_ms" in reference
    table = Table("model", "params", "MACs / example", metric, *(["ms / example (batch 1)"] if timed else []))
    for row in rows:
        latency = [f"{row['latency_ms']:.3f}{versus(row, 'latency_ms', '.2f', 'x')}"] if timed else []
        table.add_row(row["name"], f"{row['params']:,}{versus(row, 'params', '.1%')}",
                      f"{row['macs']:,}{versus(row, 'macs', '.1%')}", f"{row[metric]:.4f}", *latency)
    console.print(table)


_FILE_FORMATS = {"pt2": ".pt2", "onnx": ".onnx", "gguf": ".gguf"}


@cli.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["hf", *_FILE_FORMATS]), required=True,
              help="hf: a Hugging Face directory; pt2: a torch.export program; onnx; gguf: llama.cpp's (llama students).")
@click.option("--data", type=click.Path(), default=None,
              help="pt2, onnx: the data as compress read it; the student is traced and checked on its first two examples.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export_command(directory: str, out: str, fmt: str, data: str | None, overwrite: bool) -> None:
    """Export a compressed DIRECTORY to OUT, in a format that loads without inhernet.

    DIRECTORY is what `inhernet compress` / `train` wrote; its teacher is rebuilt from source.json.
    pt2 and onnx outputs are checked against the student on two examples of --data.

    \b
    Example:
      inhernet export out/r18-pets out/r18-pets.pt2 --format pt2 --data pets/train
      inhernet export out/smollm2 out/smollm2-hf --format hf
    """
    from . import load
    from .sources import build_model, load_tokenizer, make_loader, open_source, read_source

    target, source = Path(out), read_source(directory)
    if target.exists() and (target.is_file() or any(target.iterdir())) and not overwrite:
        raise click.UsageError(f"{out} exists{'' if target.is_file() else ' and is not empty'}: add --overwrite to "
                               "replace it, or give another OUT")
    if fmt in _FILE_FORMATS and target.is_dir():
        raise ValueError(f"{out} is a directory; --format {fmt} writes one file, e.g. {target / ('model' + _FILE_FORMATS[fmt])}")
    if fmt == "hf" and source.model.library != "hf":
        raise ValueError(f"--format hf writes Hugging Face models; {directory}'s teacher is {source.model}: use pt2 or onnx")
    if fmt in ("pt2", "onnx"):
        if data is None:
            raise click.UsageError(f"--format {fmt} traces the student on examples: give --data (as for compress)")
        opened = open_source(source, data)
        teacher, example = opened.teacher, next(iter(make_loader(opened.data.dataset, 2)))
    else:
        teacher, example = build_model(source.model), None
    student = load(directory, base=teacher)
    tokenizer = load_tokenizer(source.model) if fmt in ("hf", "gguf") and source.model.library == "hf" else None
    change = _export_as(fmt, student, target, example, tokenizer)
    size = sum(f.stat().st_size for f in [target, *target.rglob("*")] if f.is_file())
    checked = "" if change is None else f"; its outputs differ from the student's by {change:.1e} (relative) on 2 examples"
    console.print(f"wrote {out} ({size / 1e6:.1f} MB){checked}", highlight=False)


def _export_as(fmt: str, student: Any, target: Path, example: Any, tokenizer: Any) -> float | None:
    """Write ``student`` to ``target`` in ``fmt``; the relative output change measured, where one is."""
    from .deploy import export_gguf, export_hf, export_onnx, export_pt2, verify_onnx, verify_pt2
    from .deploy.gguf import TokenizerNotWritable

    if fmt == "hf":
        export_hf(student, target, tokenizer=tokenizer, overwrite=True)  # OUT was checked by the caller
        return None
    if fmt == "gguf":
        try:
            export_gguf(student, target, tokenizer=tokenizer)
        except TokenizerNotWritable as err:  # the weights are still worth having: say what llama.cpp lacks
            warnings.warn(f"{err}. Wrote the weights without the tokenizer: llama.cpp needs one to run the file",
                          stacklevel=2)
            export_gguf(student, target)
        return None
    export, verify = (export_pt2, verify_pt2) if fmt == "pt2" else (export_onnx, verify_onnx)
    export(student, example, target)
    return verify(target, student, example)


def print_plan(plan) -> None:
    table = Table("layer", "kind", "shape", "rank", "params before", "params after", "note")
    for row in plan.layers:
        rank = "" if row.rank is None else f"{row.rank}/{row.max_rank}"
        table.add_row(
            row.name or "(root)", row.kind, row.shape, rank, f"{row.params_before:,}", f"{row.params_after:,}", row.reason
        )
    console.print(table)
    console.print(plan.summary())


def run(group: click.Group) -> None:
    """Run a command group: one-line errors and exit status 2 on bad input; tracebacks for bugs and with --debug."""
    _debug["on"] = False
    try:
        group(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except USER_ERRORS as err:  # AssetMissingError is a FileNotFoundError
        if _debug["on"] or os.environ.get("INHERNET_DEBUG", "") not in ("", "0"):
            raise
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


def main() -> None:
    """The ``inhernet`` entry point."""
    run(cli)


if __name__ == "__main__":
    main()
