"""Load exported Hugging Face directories the way a user without inhernet does (issue 28's check).

One subprocess runs every case, with ``python -I`` (no user site, no PYTHONPATH) and an import hook that
refuses ``inhernet`` on top, so not even the editable install is reachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# The first lines of a script for a fresh interpreter in which `import inhernet` fails: what a user without it has.
REFUSE_INHERNET = r'''
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("inhernet", "inhernet_bench"):
            raise ImportError(f"{name} is not importable here")
sys.meta_path.insert(0, Refuse())
'''

LOADER = REFUSE_INHERNET + r'''
import json
import torch, transformers
from safetensors.torch import load_file, save_file
cases, out = json.load(open(sys.argv[1])), {}
for case in cases:
    inputs, auto, name = load_file(case["inputs"]), getattr(transformers, case["auto"]), case["name"]
    model = auto.from_pretrained(case["dir"], trust_remote_code=case["remote"]).eval()
    with torch.no_grad():
        out[name + "/logits"] = model(**inputs).logits.contiguous()
        if case["new_tokens"]:
            out[name + "/tokens"] = model.generate(**inputs, max_new_tokens=case["new_tokens"], do_sample=False)
    model.save_pretrained(case["again"])
    again = auto.from_pretrained(case["again"], trust_remote_code=case["remote"]).eval()
    with torch.no_grad():
        out[name + "/again"] = again(**inputs).logits.contiguous()
    if case["tokenize"]:
        out[name + "/tokenized"] = torch.tensor(transformers.AutoTokenizer.from_pretrained(case["dir"])(case["tokenize"])["input_ids"])
assert not any(m.partition(".")[0] in ("inhernet", "inhernet_bench") for m in sys.modules)
save_file(out, sys.argv[2])
'''


def case(name: str, out: Path, auto: str, inputs: dict[str, torch.Tensor], *, remote: bool, new_tokens: int = 0,
         tokenize: str | None = None) -> dict[str, Any]:
    """One directory to load: ``out`` by ``transformers.<auto>``, run on ``inputs``; ``new_tokens``: greedy
    tokens to generate (0: none); ``tokenize``: a text for the saved tokenizer. Saved back to ``<out>.again``."""
    save_file(inputs, out.with_name(out.name + ".inputs.safetensors"))
    return {"name": name, "dir": str(out), "again": str(out.with_name(out.name + ".again")), "auto": auto,
            "remote": remote, "new_tokens": new_tokens, "tokenize": tokenize,
            "inputs": str(out.with_name(out.name + ".inputs.safetensors"))}


def load_without_inhernet(cases: list[dict[str, Any]], work: Path) -> dict[str, torch.Tensor]:
    """Run ``cases`` in one subprocess that cannot import inhernet: per case ``name``, ``name/logits``,
    ``name/again`` (the logits after ``save_pretrained`` and loading that), ``name/tokens`` and ``name/tokenized``."""
    (work / "cases.json").write_text(json.dumps(cases))
    (work / "load.py").write_text(LOADER)
    env = {**os.environ, "HF_MODULES_CACHE": str(work / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-I", str(work / "load.py"), str(work / "cases.json"),
                           str(work / "results.safetensors")], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(work / "results.safetensors")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def tensor_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in ``directory/model.safetensors``, read from its header."""
    with safe_open(directory / "model.safetensors", "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 -- not a dict
