"""A part written before a knob was removed is reused when it recorded the one value today's code runs, and
refused when it recorded another (it was made differently)."""

from __future__ import annotations

import json

import pytest

from inhernet_bench.parts import Parts


def _recipe(**config):
    return {"method": "inhernet", "builder": "b", "params": 1, "macs": 1, "config": {"budget": 0.25, **config}}


def test_a_part_with_the_removed_gate_defaults_is_todays(tmp_path):
    old = Parts(tmp_path, {"preset": "p"})
    old.write_run("inhernet", 0, _recipe(routing="soft", gate_pool="mean"), {"final": 0.9})
    assert Parts(tmp_path, {"preset": "p"}).run("inhernet", 0, _recipe()) == {"final": 0.9}


def test_a_part_made_with_a_removed_variant_is_refused(tmp_path):
    old = Parts(tmp_path, {"preset": "p"})
    old.write_run("inhernet", 0, _recipe(routing="top1"), {"final": 0.9})
    with pytest.raises(ValueError, match=r"another configuration.*recipe"):
        Parts(tmp_path, {"preset": "p"}).run("inhernet", 0, _recipe())
    assert json.loads(old.run_path("inhernet", 0).read_text())["data"] == {"final": 0.9}  # nothing lost
