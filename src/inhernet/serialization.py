"""``save()`` / ``load()``: an inherited model as ``inhernet.json`` + ``model.safetensors``, no pickle.

The JSON holds the per-layer spec (which teacher layer became a block of which rank and experts);
``load`` rebuilds that structure on a fresh model of the teacher's architecture, then loads the
tensors with strict key and shape checks. The weights' SHA-256 is recorded, so a truncated or
altered file is refused before any tensor is read. Both files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ._atomic import atomic_path
from ._version import __version__
from .config import InherConfig
from .kinds import kind_of
from .layers import GATE_POOLS, ROUTINGS, InherBlock
from .surgery import replace_module

__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "WEIGHTS_NAME", "load", "save"]

FORMAT_VERSION = 1
CONFIG_NAME = "inhernet.json"
WEIGHTS_NAME = "model.safetensors"


def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (the result of :func:`inherit`, possibly fine-tuned) to directory ``path``.

    Returns the directory. Both files are written to temporary names first and replace those of an
    earlier save only once both are complete, so a failed save leaves the earlier pair intact.
    """
    blocks = _blocks(model)
    if not blocks:
        raise ValueError(
            "model has no InherNet blocks: save() stores inherited models; pass the result of inherit()"
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_NAME
    # Nested: the JSON replaces its predecessor only once the weights are complete, and the weights
    # replace theirs right after; a failure before that removes both temporary files.
    with atomic_path(weights) as tmp_weights:
        save_model(model, str(tmp_weights), metadata={"format": "pt", "inhernet_format": str(FORMAT_VERSION)})
        digest = _sha256(tmp_weights)
        plan = getattr(model, "inhernet_plan", None)
        # A loaded model has no plan, only the config it was inherited with: keep that on a re-save.
        config = plan.config if plan is not None else getattr(model, "inhernet_config", None)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "inhernet_version": __version__,
            "model_class": type(model).__name__,
            "params": sum(p.numel() for p in model.parameters()),
            "config": config.to_dict() if config is not None else None,
            "layers": {
                name: {"rank": b.rank, "experts": b.experts, "source": getattr(b, "source", None), **_gating(b)}
                for name, b in blocks.items()
            },
            "weights": {"file": WEIGHTS_NAME, "sha256": digest},
        }
        with atomic_path(out / CONFIG_NAME) as tmp_config:
            tmp_config.write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load(path: str | os.PathLike[str], base: nn.Module) -> nn.Module:
    """Rebuild a saved inherited model on ``base``, a model of the teacher's architecture.

    ``base`` is modified in place (its planned layers become blocks) and returned, on the device of
    its parameters. Its own weights do not matter: every tensor comes from the file. The
    :class:`InherConfig` it was inherited with becomes ``base.inhernet_config`` (so a later
    :func:`save`, e.g. after fine-tuning, records it again).
    """
    if not isinstance(base, nn.Module):
        raise TypeError(f"base must be a torch.nn.Module of the teacher's architecture, got {type(base).__name__}")
    meta = _read_meta(Path(path))
    weights = Path(path) / meta["weights"]["file"]
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; save() writes it beside {CONFIG_NAME}")
    if _sha256(weights) != meta["weights"]["sha256"]:
        raise ValueError(f"{weights} does not match the checksum in {CONFIG_NAME}: the file is corrupted or truncated")
    if meta["model_class"] != type(base).__name__:
        raise ValueError(
            f"{path} was saved from a {meta['model_class']}, but base is a {type(base).__name__}; "
            "pass a model of the same architecture"
        )
    config = _read_config(meta.get("config"), Path(path))
    for name, spec in meta["layers"].items():
        base = _rebuild_layer(base, name, spec)
    device = next((p.device for p in base.parameters()), torch.device("cpu"))
    try:
        load_model(base, str(weights), strict=True, device=str(device))
    except SafetensorError as err:
        raise ValueError(f"{weights} is not a readable safetensors file (corrupted or truncated?): {err}") from None
    except RuntimeError as err:
        raise ValueError(f"{weights} does not fit the rebuilt model: {err}") from None
    if config is not None:
        base.inhernet_config = config
    return base


def _read_config(d: Any, path: Path) -> InherConfig | None:
    if d is None:
        return None
    try:
        return InherConfig.from_dict(d)
    except (AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{path / CONFIG_NAME}: malformed 'config' entry: {err}") from None


def _rebuild_layer(base: nn.Module, name: str, spec: dict[str, Any]) -> nn.Module:
    try:
        module = base.get_submodule(name)
        rank, experts, source = int(spec["rank"]), int(spec["experts"]), spec["source"]
    except AttributeError:
        raise ValueError(f"base has no module {name!r}: it is not the architecture the file was saved from") from None
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{CONFIG_NAME}: layer {name!r} has a malformed spec {spec!r}") from None
    kind = kind_of(module)
    actual = kind.spec(module) if kind is not None else {"kind": type(module).__name__}
    if actual != source:
        raise ValueError(
            f"base layer {name!r} is {actual}, but the file was saved from {source}: base is not the "
            "architecture the file was saved from"
        )
    block = kind.build(module, rank, experts)  # type: ignore[union-attr]
    # Forward-time gate options (no tensors of their own); absent = the defaults, as in older files.
    block.routing, block.gate_pool = spec.get("routing", "soft"), spec.get("gate_pool", "mean")
    if block.routing not in ROUTINGS or block.gate_pool not in GATE_POOLS:
        raise ValueError(f"{CONFIG_NAME}: layer {name!r} has an unknown routing/gate_pool in {spec!r}")
    block.source = source
    block.train(module.training)
    return replace_module(base, name, block)


def _gating(block: InherBlock) -> dict[str, str]:
    """A block's non-default gate options (``routing``, ``gate_pool``) for its spec."""
    out = {}
    if block.routing != "soft":
        out["routing"] = block.routing
    if block.gate_pool != "mean":
        out["gate_pool"] = block.gate_pool
    return out


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
    return meta


def _blocks(model: nn.Module) -> dict[str, InherBlock]:
    return {name: m for name, m in model.named_modules() if isinstance(m, InherBlock)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


