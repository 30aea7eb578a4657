"""Teachers trained once for a preset and cached on disk: ``model.safetensors`` + ``meta.json``.

The cache lives in ``inhernet_home()/"teachers"/<name>/``. ``meta.json`` records how the teacher was
made (its ``recipe``) and what it scored; a cache whose recipe differs from the one asked for, or whose
weights no longer match the SHA-256 recorded beside them, is stale and is not used. Both files are
written atomically, the metadata last, so a half-written cache is never mistaken for a complete one.
Loading reads tensors only (safetensors), never pickled objects.

:func:`build_teacher` is the one way a preset's teacher is trained: a :class:`TeacherSpec` says what to
train (the starting model, its splits, its loss) and how (its ``recipe``: learning rate, batch, warm-up,
evaluation interval, patience, seed, step cap, and what the data and base weights are). It trains on the
training split minus a validation split carved from it, at a constant learning rate after a linear
warm-up (so "stopped improving" is judged at constant lr), evaluates validation every ``eval_every``
steps, keeps the best checkpoint and stops after ``patience`` evaluations without improvement; the test
split is read once, at the end. The cache's name is ``<preset>-<key>``, ``key`` a hash of the recipe.
Training can be split into parts: ``max_minutes`` (or ``stop_after`` steps) ends a part cleanly after
saving its state (weights, optimizer, step, best score, random state) in ``state/``; the next call
continues it and ends where one uninterrupted run would. The data order is a function of the step (a
seeded permutation per epoch), so the state needs no loader position.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from torch.utils.data import Dataset, default_collate

from inhernet._atomic import atomic_path, atomic_write
from inhernet._files import sha256_file
from inhernet.batches import batch_labels, device_of, forward_batch, logits_of, move_batch
from inhernet.evaluate import evaluate
from inhernet_bench.presets.assets import inhernet_home

__all__ = ["FIT_THREADS", "RECIPE_KEYS", "TeacherMissingError", "TeacherSpec", "build_teacher", "classification_loss",
           "fit_threads", "load_cached_teacher", "load_teacher", "recipe_key", "save_cached_teacher",
           "stratified_split", "teacher_cache_dir"]

#: what every recipe states (more keys, e.g. the data and base weights, are welcome)
RECIPE_KEYS = ("lr", "batch_size", "warmup_steps", "weight_decay", "eval_every", "patience", "max_steps", "seed")

WEIGHTS_NAME = "model.safetensors"
META_NAME = "meta.json"


#: the torch threads a teacher is fine-tuned with, whatever the caller's: a CPU's float sums depend on how
#: the work is split, so that fits with 1 and 2 threads differ: with the same count on every machine, the
#: same teacher
FIT_THREADS = 2


@contextmanager
def fit_threads() -> Iterator[None]:
    """Run a teacher's fine-tuning with :data:`FIT_THREADS` torch threads, the caller's count restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(FIT_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def teacher_cache_dir(preset: str) -> Path:
    """``inhernet_home()/"teachers"/preset``: where a teacher is cached (``preset`` is a plain name)."""
    if not preset or "/" in preset or preset.startswith("."):
        raise ValueError(f"preset must be a plain directory name like 'tweets-minilm', got {preset!r}")
    return inhernet_home() / "teachers" / preset


def save_cached_teacher(model: nn.Module, preset: str, recipe: dict[str, Any], **meta: Any) -> Path:
    """Cache ``model``'s weights for ``preset`` with its ``recipe`` and any JSON-able ``meta``.

    Returns the cache directory.
    """
    out = teacher_cache_dir(preset)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_NAME).unlink(missing_ok=True)  # no metadata vouches for weights being replaced
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        # contiguous: a channels-last model's tensors are saved as their values
        save_model(model, str(tmp), metadata={"format": "pt"}, force_contiguous=True)
    meta = {"recipe": recipe, **meta, "sha256": sha256_file(out / WEIGHTS_NAME)}
    atomic_write(out / META_NAME, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def load_cached_teacher(model: nn.Module, preset: str, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """Load the cached weights of ``preset`` into ``model`` (strict) and return the cache's metadata.

    Returns ``None``, leaving ``model`` untouched, when there is no complete cache, its recipe is not
    ``recipe`` (JSON round trip compared, so tuples equal lists) or its weights fail their checksum.

    Raises:
        ValueError: if the cached files are unreadable or do not fit ``model``.
    """
    folder = teacher_cache_dir(preset)
    meta_path, weights = folder / META_NAME, folder / WEIGHTS_NAME
    if not (meta_path.is_file() and weights.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_path} is not readable JSON ({err}); delete {folder} to rebuild it") from None
    if not isinstance(meta, dict) or meta.get("recipe") != json.loads(json.dumps(recipe)):
        return None
    if meta.get("sha256") != sha256_file(weights):
        return None
    try:
        load_model(model, str(weights), strict=True)
    except (SafetensorError, RuntimeError) as err:
        raise ValueError(f"{weights} does not fit the teacher ({err}); delete {folder} to rebuild it") from None
    return meta


# -- training a teacher until validation stops improving ---------------------------------------------------
class TeacherMissingError(FileNotFoundError):
    """A preset's converged teacher has not been built (the message names the command that builds it)."""


@dataclass(frozen=True)
class TeacherSpec:
    """How to train one preset's teacher.

    ``model()`` builds the starting point (base weights, a seeded head); ``splits(model)`` returns
    ``(train dataset, validation loader, test loader)``, disjoint; ``loss(model, batch)`` the training loss
    of a batch collated by ``collate``; ``metric`` is an :func:`inhernet.evaluate.evaluate` metric (lower is
    better for ``perplexity`` only); ``trainable(model)`` the parameters that learn (default: all).
    """

    preset: str
    recipe: Mapping[str, Any]
    model: Callable[[], nn.Module]
    splits: Callable[[nn.Module], tuple[Dataset, Iterable[Any], Iterable[Any]]]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    metric: str
    trainable: Callable[[nn.Module], Sequence[nn.Parameter]] | None = None
    collate: Callable[[list[Any]], Any] = default_collate

    def __post_init__(self) -> None:
        missing = [k for k in RECIPE_KEYS if k not in self.recipe]
        if missing:
            raise ValueError(f"recipe of {self.preset!r} must state {missing}; it has {sorted(self.recipe)}")

    @property
    def name(self) -> str:
        """The cache's directory name: ``<preset>-<recipe key>``."""
        return f"{self.preset}-{recipe_key(self.recipe)}"


def recipe_key(recipe: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of ``recipe`` as sorted JSON: any change to the recipe changes it."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def stratified_split(labels: torch.Tensor, n_val: int, seed: int) -> tuple[list[int], list[int]]:
    """``(train, validation)`` indices of ``labels``, sorted: ``n_val`` (about) drawn from each class in its
    share, by a permutation fixed by ``seed``. Disjoint and together all of ``range(len(labels))``."""
    if not 0 < n_val < len(labels):
        raise ValueError(f"n_val must be in [1, {len(labels) - 1}] for {len(labels)} examples, got {n_val}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    chosen = []
    for c in labels.unique():
        members = order[labels[order] == c]
        chosen.append(members[: max(1, round(n_val * len(members) / len(labels)))])
    val = torch.zeros(len(labels), dtype=torch.bool)
    val[torch.cat(chosen)] = True
    return (~val).nonzero().flatten().tolist(), val.nonzero().flatten().tolist()


def classification_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy of ``model``'s logits on a labelled batch (a tuple or a dict with ``labels``)."""
    return nn.functional.cross_entropy(logits_of(forward_batch(model, batch)), batch_labels(batch))


def load_teacher(spec: TeacherSpec) -> nn.Module:
    """The converged teacher of ``spec``, in eval mode, from its cache.

    Raises:
        TeacherMissingError: if it has not been built for this recipe (the message names the command).
    """
    model = spec.model()
    if load_cached_teacher(model, spec.name, dict(spec.recipe)) is None:
        raise TeacherMissingError(
            f"the converged {spec.preset} teacher is not built (expected in {teacher_cache_dir(spec.name)}); "
            f"build it once with `inhernet-bench teacher --preset {spec.preset}` (resumable: add --max-minutes)"
        )
    return model.eval()


def build_teacher(
    spec: TeacherSpec, *, max_minutes: float | None = None, stop_after: int | None = None,
    command: str | None = None, device: str = "cpu", log: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Train ``spec``'s teacher (or continue it) until validation stops improving; cache the best checkpoint.

    Args:
        max_minutes: end this part cleanly (state saved) once it has trained this long.
        stop_after: end this part after this many steps (the same, counted in steps).
        command: the command line recorded in the record.
        device: where to train (e.g. ``"cuda"``); a resumed part matches an uninterrupted one on the CPU,
            whose random state is saved (dropout on an accelerator draws from its own).

    Returns:
        The record (``meta.json``) when the teacher is done (also when it already was), ``None`` when
        this part ended before it was.
    """
    folder = teacher_cache_dir(spec.name)
    if (folder / "meta.json").is_file():
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    r, start = spec.recipe, time.perf_counter()
    with fit_threads(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(r["seed"])
        model = spec.model()
        train, val, test = spec.splits(model)
        model.to(device)
        optimizer = _optimizer(model, spec)
        run = _Run(folder / "state", model, optimizer, r)
        log(f"{spec.preset} teacher: {'continuing at step ' + str(run.step) if run.step else 'training'} "
            f"({len(train):,} training examples, cache {folder})")
        deadline = start + 60 * max_minutes if max_minutes is not None else float("inf")
        until = run.step + stop_after if stop_after is not None else None
        model.train()
        while not run.done:
            _step(spec, model, optimizer, train, run.step)
            run.step += 1
            if run.step % r["eval_every"] == 0 or run.step == r["max_steps"]:
                run.evaluated(evaluate(model, val, spec.metric)[spec.metric], spec.metric != "perplexity", log)
                run.save(time.perf_counter() - start)  # a killed part loses at most one evaluation interval
            if not run.done and (run.step == until or time.perf_counter() >= deadline):
                run.save(time.perf_counter() - start)
                log(f"{spec.preset} teacher: stopped at step {run.step} (best validation {run.best}); rerun to go on")
                return None
        record = {"command": command, "device": str(device), "train_examples": len(train)}
        return _finish(spec, run, test, time.perf_counter() - start, record, log)


def _optimizer(model: nn.Module, spec: TeacherSpec) -> torch.optim.Optimizer:
    """AdamW; weight decay skips biases and norms (1-D parameters)."""
    params = [p for p in (spec.trainable(model) if spec.trainable else model.parameters()) if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.recipe["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=spec.recipe["lr"])


def _step(spec: TeacherSpec, model: nn.Module, optimizer: torch.optim.Optimizer, train: Dataset, step: int) -> None:
    """One training step on batch ``step`` of the fixed order: epoch ``e`` is permutation ``seed + e``."""
    r = spec.recipe
    per_epoch = len(train) // r["batch_size"]
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(r["seed"] + epoch))
    batch = spec.collate([train[i] for i in order[position * r["batch_size"] : (position + 1) * r["batch_size"]]])
    batch = move_batch(batch, device_of(model))
    for group in optimizer.param_groups:
        group["lr"] = r["lr"] * min(1.0, (step + 1) / max(1, r["warmup_steps"]))
    loss = spec.loss(model, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{spec.preset} teacher diverged at step {step}: loss {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    optimizer.step()


class _Run:
    """A build's progress: step, validation history, best score and weights; saved to and resumed from
    ``folder`` (safetensors for tensors, JSON for the rest; the JSON written last vouches for the others)."""

    def __init__(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, recipe: Mapping[str, Any]):
        self.folder, self.model, self.optimizer, self.recipe = folder, model, optimizer, recipe
        self.step, self.history, self.best, self.best_step, self.wall_s = 0, [], None, 0, 0.0
        self.best_state = _copy(model)
        progress = folder / "progress.json"
        if progress.is_file():
            self._resume(json.loads(progress.read_text(encoding="utf-8")))

    @property
    def done(self) -> bool:
        """Patience spent (that many evaluations since the best) or the step cap reached."""
        evals_since_best = sum(1 for step, _ in self.history if step > self.best_step)
        return evals_since_best >= self.recipe["patience"] or self.step >= self.recipe["max_steps"]

    def evaluated(self, score: float, higher: bool, log: Callable[[str], None]) -> None:
        """Record a validation ``score``; a strictly better one becomes the best checkpoint."""
        self.history.append((self.step, score))
        if self.best is None or (score > self.best if higher else score < self.best):
            self.best, self.best_step = score, self.step
            self.best_state = _copy(self.model)
        log(f"step {self.step}: validation {score:.4f} (best {self.best:.4f} at step {self.best_step})")

    def save(self, part_s: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "progress.json").unlink(missing_ok=True)  # nothing vouches for files being replaced
        with atomic_path(self.folder / "model.safetensors") as tmp:
            save_model(self.model, str(tmp), force_contiguous=True)
        with atomic_path(self.folder / "best.safetensors") as tmp:
            save_file(self.best_state, str(tmp))
        optim = {f"{i}.{k}": v.contiguous() for i, s in self.optimizer.state_dict()["state"].items()
                 for k, v in s.items()}
        with atomic_path(self.folder / "optimizer.safetensors") as tmp:
            save_file({**optim, "rng": torch.get_rng_state()}, str(tmp))
        progress = {"key": recipe_key(self.recipe), "step": self.step, "history": self.history, "best": self.best,
                    "best_step": self.best_step, "wall_s": self.wall_s + part_s}
        atomic_write(self.folder / "progress.json", json.dumps(progress) + "\n")

    def _resume(self, progress: dict[str, Any]) -> None:
        if progress.get("key") != recipe_key(self.recipe):
            raise ValueError(f"{self.folder} holds another recipe's state; delete it to start again")
        load_model(self.model, str(self.folder / "model.safetensors"), strict=True)
        self.best_state = load_file(str(self.folder / "best.safetensors"))
        tensors = load_file(str(self.folder / "optimizer.safetensors"))
        torch.set_rng_state(tensors.pop("rng"))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            index, key = name.split(".", 1)
            state.setdefault(int(index), {})[key] = value
        self.optimizer.load_state_dict({**self.optimizer.state_dict(), "state": state})
        self.step, self.best, self.best_step = progress["step"], progress["best"], progress["best_step"]
        self.history, self.wall_s = [tuple(h) for h in progress["history"]], progress["wall_s"]


def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous copy of ``model``'s state (safetensors stores contiguous, unshared tensors)."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


def _finish(
    spec: TeacherSpec, run: _Run, test: Iterable[Any], part_s: float, record: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Keep the best checkpoint, read the test split once, cache the teacher with its record."""
    run.model.load_state_dict(run.best_state, strict=True)
    scores = evaluate(run.model, test, spec.metric)
    record = {
        **record, "teacher": spec.name, "steps": run.step,
        "best_step": run.best_step, "stopped": "patience" if run.step < spec.recipe["max_steps"] else "max_steps",
        "validation": {spec.metric: run.best}, "validation_history": run.history,
        "test": scores, "wall_s": round(run.wall_s + part_s, 1),
        "torch": torch.__version__,
    }
    folder = save_cached_teacher(run.model.eval(), spec.name, dict(spec.recipe), **record)
    shutil.rmtree(run.folder, ignore_errors=True)
    log(f"{spec.preset} teacher done: validation {run.best:.4f} at step {run.best_step}, test {scores}; {folder}")
    return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
