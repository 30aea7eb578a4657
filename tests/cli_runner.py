"""Run the ``inhernet`` command line in-process, for the CLI tests."""

from __future__ import annotations

import sys

import pytest

from inhernet.cli import main


def invoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run ``inhernet ARGS`` in-process through ``main()``; returns ``(exit code, stdout, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["inhernet", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
