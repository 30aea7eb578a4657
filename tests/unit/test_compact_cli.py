"""``inhernet eval --compact``: the compact form keeps the student's outputs, says by how much, and
``--rank-multiple`` chooses the rounding."""

from __future__ import annotations

import json

from test_cli_user import assets  # noqa: F401 - the tiny BERT classifier and its CSV (a module fixture)

import inhernet
from cli_runner import invoke
from inhernet.deploy.compact import TOLERANCE
from inhernet.sources import build_model, read_source


def test_eval_compact_keeps_the_outputs_and_reports_the_change(tmp_path, assets, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("INHERNET_HOME", str(tmp_path / "home"))  # the cost table's cache
    out = tmp_path / "bert"
    code, _, err = invoke(
        monkeypatch, capsys, "compress", assets["bert"], "--data", assets["csv"], "--budget", 0.5, "--batch-size", 8,
        "--out", out,
    )
    assert code == 0, err
    student = inhernet.load(out, base=build_model(read_source(out).model))
    ranks = [b.rank for b in student.modules() if isinstance(b, inhernet.InherBlock)]
    assert any(r > 8 and r % 8 for r in ranks), "the test needs ranks that rounding down to 8 would cut"
    code, stdout, err = invoke(
        monkeypatch, capsys, "eval", out, "--data", assets["csv"], "--compact", "--json", tmp_path / "e.json"
    )
    assert code == 0, err
    assert "compact form: its outputs differ from the student's by" in stdout
    _, student, compacted = json.loads((tmp_path / "e.json").read_text())["models"]
    assert compacted["name"] == "inhernet-compact" and compacted["output_change"] <= TOLERANCE
    assert compacted["accuracy"] == student["accuracy"]
    code, _, err = invoke(monkeypatch, capsys, "eval", out, "--data", assets["csv"], "--compact", "--rank-multiple", 0)
    assert code != 0 and "--rank-multiple" in err
