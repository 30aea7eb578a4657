"""``save()`` / ``load()``: an inherited model as ``inhernet.json`` + ``model-<hash>.safetensors``, no pickle
(docs/design.md, "Save and load": the order of the writes, and the checks before a tensor is allocated)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_model
from torch import nn

from ._atomic import atomic_path, atomic_write
from ._files import CONFIG_NAME, SOURCE_NAME, sha256_file
from ._version import __version__
from .blockdrop import replay
from .config import REMOVED, InherConfig, is_int
from .kinds import LayerKind, block_params, kind_of
from .layers import InherBlock
from .pruning import apply_spec
from .sources.models import build_model, key_mismatch
from .sources.record import read_source
from .stack import replace_module

__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "WEIGHTS_NAME", "load", "save", "weights_path"]

FORMAT_VERSION = 1
# The fixed weights name of directories written before content-named weights; still read by load().
WEIGHTS_NAME = "model.safetensors"
_WEIGHTS_PATTERN = re.compile(r"model-[0-9a-f]{16}\.safetensors")
# Where a new weights file is complete but not yet named after its hash (a crash may leave it behind).
_STAGING_NAME = ".model.staging.safetensors"
_TEMPORARY_PATTERN = re.compile(rf"\.({re.escape(CONFIG_NAME)}|{re.escape(_STAGING_NAME)})\.[^/]+\.tmp")


def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (the result of :func:`inherit`, possibly fine-tuned) to directory ``path``.

    Returns the directory. Writes ``inhernet.json`` and ``model-<hash>.safetensors`` (:func:`weights_path`
    finds it). An earlier save in ``path`` is replaced only once the new pair is complete.
    """
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, InherBlock)}
    records = _records(model)
    # Without blocks: a compact() result may have every block back to dense, a pruned one every layer dense.
    if not blocks and "compact" not in records and "prune" not in records:
        raise ValueError(
            "model has no InherNet blocks: save() stores inherited models; pass the result of inherit()"
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_weights(out)
    weights, digest = _write_weights(model, out)  # 1. the earlier pair is untouched
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "inhernet_version": __version__,
        "model_class": type(model).__name__,
        "params": sum(p.numel() for p in model.parameters()),
        "config": records.pop("config"),
        "layers": {
            name: {"rank": b.rank, "experts": b.experts, "source": getattr(b, "source", None)}
            for name, b in blocks.items()
        },
        "weights": {"file": weights.name, "sha256": digest},
        **records,
    }
    # 2. The JSON that names them: from this rename on, the new pair is the one that loads.
    try:
        atomic_write(out / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
    except BaseException:
        if weights.name != previous:  # an error, not a crash: leave the directory as it was
            weights.unlink(missing_ok=True)
        raise
    _remove_stale(out, keep=weights.name, previous=previous)  # 3. what the new pair replaces
    return out


def _records(model: nn.Module) -> dict[str, Any]:
    """The JSON entries beside the blocks: ``config`` (or ``None``), ``compact``, ``prune``, ``drop``."""
    plan = getattr(model, "inhernet_plan", None)
    # A loaded model has no plan, only the config it was inherited with and the records load() attached.
    config = plan.config if plan is not None else getattr(model, "inhernet_config", None)
    records: dict[str, Any] = {"config": config.to_dict() if config is not None else None}
    attributes = {"compact": "inhernet_compact", "prune": "inhernet_pruned", "drop": "inhernet_dropped"}
    for key, attribute in attributes.items():
        planned = getattr(plan, key, None) if key != "compact" else None
        value = planned.to_dict() if planned is not None else getattr(model, attribute, None)
        if value is not None:
            records[key] = value
    return records


def _write_weights(model: nn.Module, out: Path) -> tuple[Path, str]:
    """Write the weights, complete, under the name of their hash in ``out``; returns that path and the hash."""
    staging = out / _STAGING_NAME
    with atomic_path(staging) as tmp_weights:
        save_model(model, str(tmp_weights), metadata={"format": "pt", "inhernet_format": str(FORMAT_VERSION)})
    digest = sha256_file(staging)
    weights = out / f"model-{digest[:16]}.safetensors"
    os.replace(staging, weights)
    return weights, digest


def _remove_stale(out: Path, keep: str, previous: str | None) -> None:
    """Remove the earlier weights and what interrupted saves left (orphan weights, temporary files)."""
    for name in {stale.name for stale in out.iterdir()} - {keep}:
        if _WEIGHTS_PATTERN.fullmatch(name) or name == previous or _TEMPORARY_PATTERN.fullmatch(name):
            (out / name).unlink(missing_ok=True)


def weights_path(path: str | os.PathLike[str]) -> Path:
    """The weights file of the model saved in directory ``path``, as its ``inhernet.json`` names it."""
    path = Path(path)
    return path / _read_meta(path)["weights"]["file"]


def load(path: str | os.PathLike[str], base: nn.Module | None = None) -> nn.Module:
    """Rebuild a saved inherited model on ``base``, a model of the teacher's architecture.

    ``base`` is modified in place (pruned, blocks dropped, planned layers made blocks, every tensor
    from the file) and returned; a failed ``load`` leaves it as it was. The :class:`InherConfig` the
    model was inherited with becomes ``base.inhernet_config``. Without ``base``, the architecture is
    rebuilt from the ``source.json`` that ``inhernet compress`` writes beside the model.

    Raises:
        FileNotFoundError: ``path`` holds no ``inhernet.json`` or its weights file is missing.
        ValueError: a malformed or tampered file, a checksum mismatch, a ``base`` of another
            architecture, or no ``base`` for a directory that does not record its architecture.
        TypeError: ``base`` is not a module.
    """
    path = Path(path)
    if base is not None and not isinstance(base, nn.Module):
        raise TypeError(f"base must be a torch.nn.Module of the teacher's architecture, got {type(base).__name__}")
    meta = _read_meta(path)
    weights = _verified_weights(path, meta)
    config = _read_config(meta.get("config"), path)
    if base is None:
        base = _rebuild_base(path)
    if meta["model_class"] != type(base).__name__:
        raise ValueError(
            f"{path} was saved from a {meta['model_class']}, but base is a {type(base).__name__}; "
            "pass a model of the same architecture"
        )
    pruned, dropped = meta.get("prune"), meta.get("drop")
    if pruned is not None and not (isinstance(pruned, dict) and isinstance(pruned.get("spec"), dict)):
        raise ValueError(f"{path / CONFIG_NAME}: malformed 'prune' entry (a JSON object with a 'spec')")
    # The blocks kept and the pruned widths first (each checked whole before any change), so that the
    # layers below have the names and shapes their blocks were built from; undone if anything fails.
    undo = [replay(base, dropped)] if dropped is not None else []
    try:
        if pruned is not None:
            undo.append(apply_spec(base, pruned["spec"]))
        base = _build_blocks(base, meta["layers"], weights)
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    records = {"inhernet_pruned": pruned, "inhernet_dropped": dropped, "inhernet_config": config,
               "inhernet_compact": meta.get("compact") if isinstance(meta.get("compact"), dict) else None}
    for name, value in records.items():
        if value is not None:
            setattr(base, name, value)
    return base


def _verified_weights(path: Path, meta: dict[str, Any]) -> Path:
    """The weights file ``meta`` names, once it exists and matches its recorded SHA-256."""
    weights = path / meta["weights"]["file"]
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; save() writes it beside {CONFIG_NAME}")
    if sha256_file(weights) != meta["weights"]["sha256"]:
        raise ValueError(f"{weights} does not match the checksum in {CONFIG_NAME}: the file is corrupted or truncated")
    return weights


def _build_blocks(base: nn.Module, layers: dict[str, Any], weights: Path) -> nn.Module:
    """Replace the layers ``layers`` names by their recorded blocks, load ``weights``; undone on failure."""
    specs = {name: _check_layer(base, name, spec) for name, spec in layers.items()}
    try:
        _check_size(weights, specs)
        state = load_file(str(weights), device="cpu")
    except SafetensorError as err:
        raise ValueError(f"{weights} is not a readable safetensors file (corrupted or truncated?): {err}") from None
    originals: dict[str, nn.Module] = {}
    try:
        for name, (module, kind, rank, experts, source) in specs.items():
            block = kind.build(module, rank, experts)
            block.source = source
            block.train(module.training)
            originals[name] = module
            base = replace_module(base, name, block)
        _check_state(base, state, weights)
        base.load_state_dict(state, strict=False)  # only tied duplicates are absent (checked)
    except BaseException:
        for name, module in originals.items():
            base = replace_module(base, name, module)
        raise
    return base


def _rebuild_base(path: Path) -> nn.Module:
    """A model of the architecture recorded in ``path/source.json`` (written by ``inhernet compress``)."""
    if not (path / SOURCE_NAME).is_file():
        raise ValueError(
            f"{path} does not record the model's architecture (no {SOURCE_NAME}, which `inhernet compress` "
            f"writes): pass base=<a model of the teacher's architecture>, e.g. load({str(path)!r}, base=teacher)"
        )
    spec = read_source(path).model
    # The architecture is all that is needed: every tensor comes from the saved file.
    return build_model(replace(spec, weights=None, weights_sha256=None) if spec.library != "hf" else spec)


def _check_layer(base: nn.Module, name: str, spec: Any) -> tuple[nn.Module, LayerKind, int, int, Any]:
    """The module ``name`` of ``base``, its kind, and the validated rank, experts and source of ``spec``."""
    if not isinstance(spec, dict) or not {"rank", "experts", "source"} <= set(spec):
        raise ValueError(f"{CONFIG_NAME}: layer {name!r} has a malformed spec {spec!r}")
    rank, experts, source = spec["rank"], spec["experts"], spec["source"]
    for key, value in (("rank", rank), ("experts", experts)):
        if not is_int(value, 1):
            raise ValueError(f"{CONFIG_NAME}: layer {name!r} has a malformed spec {spec!r} ({key} must be an int >= 1)")
    for key, kept in (("routing", "soft"), ("gate_pool", "mean")):  # gate options older versions recorded
        if spec.get(key, kept) != kept:
            raise ValueError(f"{CONFIG_NAME}: layer {name!r} has {key}={spec[key]!r}, only {kept!r} loads: {REMOVED[key]}")
    try:
        module = base.get_submodule(name)
    except AttributeError:
        raise ValueError(f"base has no module {name!r}: it is not the architecture the file was saved from") from None
    kind = kind_of(module)
    actual = kind.spec(module) if kind is not None else {"kind": type(module).__name__}
    if kind is None or actual != source:
        raise ValueError(
            f"base layer {name!r} is {actual}, but the file was saved from {source}: base is not the "
            "architecture the file was saved from"
        )
    full = min(kind.shape(module))
    if rank > full:
        raise ValueError(
            f"{CONFIG_NAME}: layer {name!r} has rank {rank}, beyond its full rank {full} "
            f"(shape {kind.describe(module)}): the file is corrupted or edited by hand"
        )
    return module, kind, rank, experts, source


def _check_size(weights: Path, specs: dict[str, tuple[nn.Module, LayerKind, int, int, Any]]) -> None:
    """Refuse ranks and experts that need more parameters than the weights file holds (read from its header)."""
    with safe_open(str(weights), framework="pt") as f:
        held = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 - not a dict
    needed = 0
    for module, kind, rank, experts, _ in specs.values():
        m, n = kind.shape(module)
        needed += block_params(m, n, rank, experts, kind.bias(module) is not None)
    if needed > held:
        raise ValueError(
            f"{CONFIG_NAME}: its layers' ranks and experts need {needed:,} parameters but {weights} holds "
            f"{held:,}: the file is corrupted or edited by hand"
        )


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], weights: Path) -> None:
    """Every tensor of ``model`` is in ``state`` with its shape (or is tied to one that is), and nothing else is."""
    own = model.state_dict()
    present = {_identity(t) for k, t in own.items() if k in state}
    missing = sorted(k for k, t in own.items() if k not in state and _identity(t) not in present)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        mismatch = key_mismatch(missing, unexpected, wrong)
        raise ValueError(f"{weights} does not fit the rebuilt model: {mismatch}")


def _identity(t: torch.Tensor) -> tuple[Any, ...]:
    """What two names of one tied tensor share."""
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def _previous_weights(out: Path) -> str | None:
    """The weights file named by an earlier save in ``out``, if its JSON is readable."""
    try:
        return _read_meta(out)["weights"]["file"]
    except (OSError, ValueError):
        return None


def _read_config(d: Any, path: Path) -> InherConfig | None:
    if d is None:
        return None
    try:
        return InherConfig.from_dict(d)
    except (AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{path / CONFIG_NAME}: malformed 'config' entry: {err}") from None


def _read_meta(path: Path) -> dict[str, Any]:
    config = path / CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: load() takes a directory written by inhernet.save()")
    try:
        meta = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config} is not valid JSON (corrupted?): {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{config} must hold a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{config} has format_version {version!r}; this inhernet reads {FORMAT_VERSION}")
    for key in ("model_class", "layers", "weights"):
        if key not in meta:
            raise ValueError(f"{config} lacks the {key!r} entry (corrupted or edited by hand?)")
    if not isinstance(meta["layers"], dict) or not isinstance(meta["weights"], dict):
        raise ValueError(f"{config}: 'layers' and 'weights' must be JSON objects")
    if "file" not in meta["weights"] or "sha256" not in meta["weights"]:
        raise ValueError(f"{config}: 'weights' must name the file and its sha256")
    name = meta["weights"]["file"]
    if not (isinstance(name, str) and name.endswith(".safetensors") and name == Path(name).name
            and "/" not in name and "\\" not in name and "\0" not in name and not name.startswith(".")):
        raise ValueError(
            f"{config}: the weights file must be a bare *.safetensors name inside {path} (no directories, "
            f"no '..'), got {name!r}"
        )
    return meta


