"""Run the ``inhernet`` (or ``inhernet-bench``) command line in-process, for the CLI tests."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from inhernet.cli import main as inhernet_main


def invoke(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object,
    main: Callable[[], None] = inhernet_main,
) -> tuple[int, str, str]:
    """Run ``inhernet ARGS`` (or another entry point ``main``) in-process; returns ``(exit code, stdout, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["inhernet", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
