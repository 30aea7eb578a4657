"""A user's own teacher, named by a spec string (``torchvision:NAME`` or ``timm:NAME`` with a local
weights file whose SHA-256 it records, or a Hugging Face model directory) and built offline."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .._files import sha256_file
from ..config import is_int

__all__ = [
    "LIBRARIES", "TASKS", "ModelSpec", "build_model", "has_trained_head", "key_mismatch", "load_state_dict",
    "load_tokenizer", "parse_model_spec",
]

LIBRARIES = ("torchvision", "timm", "hf")
TASKS = ("classify", "lm")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_SPEC_HELP = (
    "torchvision:NAME (e.g. torchvision:resnet18), timm:NAME (e.g. timm:efficientnet_lite0), or the path "
    "of a Hugging Face model directory holding config.json"
)
# Suffixes of Hugging Face architecture names, by the task their head serves.
_ARCHITECTURE_TASKS = {
    "ForSequenceClassification": "classify", "ForImageClassification": "classify", "ForCausalLM": "lm",
    "LMHeadModel": "lm",
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a teacher: what :func:`build_model` builds, as JSON-friendly fields.

    Attributes:
        library: ``"torchvision"``, ``"timm"`` or ``"hf"``.
        name: the torchvision / timm model name, or the absolute path of the Hugging Face directory.
        task: ``"classify"`` (accuracy) or ``"lm"`` (causal LM, perplexity).
        weights: absolute path of the state-dict file (torchvision / timm), or ``None`` for random init.
        weights_sha256: its SHA-256, checked whenever the model is built.
        num_classes: the classifier's output size (``None`` for a Hugging Face config's ``num_labels``).
    """

    library: Literal["torchvision", "timm", "hf"]
    name: str
    task: Literal["classify", "lm"] = "classify"
    weights: str | None = None
    weights_sha256: str | None = None
    num_classes: int | None = None

    def __str__(self) -> str:
        text = self.name if self.library == "hf" else f"{self.library}:{self.name}"
        return text + (f" + {self.weights}" if self.weights else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        if not isinstance(d, dict) or "library" not in d or "name" not in d:
            raise ValueError(f"a model spec must be a JSON object with 'library' and 'name', got {d!r}")
        spec = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        if spec.library not in LIBRARIES or spec.task not in TASKS:
            raise ValueError(f"malformed model spec {d!r}: library must be one of {LIBRARIES}, task one of {TASKS}")
        return spec


def parse_model_spec(
    text: str, *, weights: str | Path | None = None, task: str | None = None, num_classes: int | None = None,
) -> ModelSpec:
    """Parse ``torchvision:NAME``, ``timm:NAME``, ``hf:PATH`` or a Hugging Face directory path (the name
    checked against the library's registry, the weights file hashed, a directory's task read if not given).

    Raises:
        ValueError: unknown library or model name (with close matches), missing weights file, weights
            given for a Hugging Face directory, a task the model cannot serve.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if num_classes is not None and not is_int(num_classes, 1):
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    library, sep, name = text.partition(":")
    if sep and library in ("torchvision", "timm"):
        if not name:
            raise ValueError(f"model spec {text!r} names no model; expected {_SPEC_HELP}")
        _check_name(library, name)
        if task == "lm":
            raise ValueError(f"{text} is an image classifier: task 'lm' needs a Hugging Face causal LM directory")
        path, digest = _weights_file(weights)
        return ModelSpec(library, name, "classify", path, digest, num_classes)  # type: ignore[arg-type]
    directory = Path(name if sep and library == "hf" else text).expanduser()
    if not (directory / "config.json").is_file():
        raise ValueError(f"unknown model {text!r}: expected {_SPEC_HELP}")
    if weights is not None:
        raise ValueError(f"weights are read from the Hugging Face directory {directory}; drop the weights file")
    task = task or _hf_task(directory)
    if num_classes is not None and task != "classify":
        raise ValueError(f"num_classes sizes a classification head; a causal LM ({directory}) predicts its vocabulary")
    return ModelSpec("hf", str(directory.resolve()), task, num_classes=num_classes)  # type: ignore[arg-type]


def build_model(spec: ModelSpec) -> nn.Module:
    """The teacher of ``spec``, float32, in eval mode, on the CPU, offline; what the weights leave randomly
    initialised is drawn from a fixed seed, so every build of a spec is the same model.

    Raises:
        ValueError: the weights file changed since the spec was made, does not fit the architecture,
            or the Hugging Face directory cannot be loaded.
    """
    if spec.library != "hf" and spec.num_classes is None:
        raise ValueError(f"{spec}: num_classes is not set; it comes from the data or the --num-classes option")
    if spec.weights is not None and spec.weights_sha256 is not None and sha256_file(Path(spec.weights)) != spec.weights_sha256:
        raise ValueError(
            f"the teacher weights {spec.weights} changed since they were recorded (SHA-256 differs); "
            "restore that file or compress again"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if spec.library == "hf":
            model = _build_hf(spec)
        elif spec.library == "torchvision":
            import torchvision

            model = torchvision.models.get_model(spec.name, weights=None, num_classes=spec.num_classes)
        else:
            import timm

            model = timm.create_model(spec.name, pretrained=False, num_classes=spec.num_classes)
    if spec.weights is not None:
        _load_into(model, load_state_dict(spec.weights), spec)
    return model.to(torch.float32).eval()


def load_tokenizer(spec: ModelSpec) -> Any:
    """The tokenizer saved in the Hugging Face directory of ``spec``, with a padding token (for causal LMs
    without one, the end-of-sequence or else the unknown token: the attention mask hides it anyway)."""
    if spec.library != "hf":
        raise ValueError(f"{spec} has no tokenizer: text data needs a Hugging Face model directory")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.name, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load a tokenizer from {spec.name} (save one there with save_pretrained): {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise ValueError(f"the tokenizer in {spec.name} has no padding, end-of-sequence or unknown token")
    return tokenizer


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file: safetensors, or a ``torch.save`` file read with ``weights_only=True``
    (unwrapped from a ``"state_dict"`` or ``"model"`` entry, without DDP's ``"module."`` prefix)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors, pickle and zip errors have no common base
        raise ValueError(f"cannot read weights {path}: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], spec: ModelSpec) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        hint = " (a different number of classes? pass --num-classes)" if wrong and not missing else ""
        mismatch = key_mismatch(missing, unexpected, wrong)
        raise ValueError(f"{spec.weights} does not fit {spec.library}:{spec.name}: {mismatch}{hint}")
    model.load_state_dict(state)


def key_mismatch(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    """``"missing a, b; wrong shape c ..."``: how a state dict's keys differ from a model's, three of each."""
    return "; ".join(
        f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    )


def _check_name(library: str, name: str) -> None:
    if library == "torchvision":
        import torchvision

        # Image classifiers only: detection, segmentation and video models take other inputs and outputs.
        known = torchvision.models.list_models(module=torchvision.models)
        found, listing = name in known, "torchvision.models.list_models(module=torchvision.models)"
    else:
        import timm

        found, listing = timm.is_model(name), "timm.list_models()"
        known = [] if found else timm.list_models()
    if not found:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        suggestion = f"; did you mean {', '.join(f'{library}:{c}' for c in close)}?" if close else ""
        raise ValueError(f"unknown {library} image classifier {name!r}{suggestion} (all names: {listing})")


def _weights_file(weights: str | Path | None) -> tuple[str | None, str | None]:
    if weights is None:
        return None, None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} not found")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"weights file {path} must end in one of {', '.join(WEIGHT_SUFFIXES)}")
    return str(path.resolve()), sha256_file(path)


def has_trained_head(spec: ModelSpec) -> bool:
    """Whether the model's own checkpoint holds the head its task needs: always for torchvision / timm; for
    a Hugging Face directory, whether ``config.json`` names an architecture of that task."""
    return spec.library != "hf" or spec.task in _hf_tasks(Path(spec.name))[0]


def _hf_tasks(directory: Path) -> tuple[list[str], list[str]]:
    """The tasks of the architectures a Hugging Face ``config.json`` names, in order, and those names."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{directory / 'config.json'} is not readable JSON: {err}") from None
    names = (config.get("architectures") or []) if isinstance(config, dict) else []
    architectures = [a for a in names if isinstance(a, str)]
    suffixes = [next((s for s in _ARCHITECTURE_TASKS if a.endswith(s)), "") for a in architectures]
    return [_ARCHITECTURE_TASKS[s] for s in suffixes if s], architectures


def _hf_task(directory: Path) -> str:
    tasks, architectures = _hf_tasks(directory)
    if tasks:
        return tasks[0]
    raise ValueError(
        f"cannot tell the task of {directory} from its config's architectures {architectures}; "
        "pass --task classify or --task lm"
    )


def _build_hf(spec: ModelSpec) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from ..distillation.train import verbose

    auto = AutoModelForCausalLM if spec.task == "lm" else AutoModelForSequenceClassification
    head = {"num_labels": spec.num_classes} if spec.num_classes is not None else {}
    were_on = hf_logging.is_progress_bar_enabled()
    if not verbose():  # the "Loading weights" bar, on every command
        hf_logging.disable_progress_bar()
    try:
        return auto.from_pretrained(spec.name, local_files_only=True, **head)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"cannot load {auto.__name__} from {spec.name}: {err}") from None
    finally:
        if were_on:
            hf_logging.enable_progress_bar()
