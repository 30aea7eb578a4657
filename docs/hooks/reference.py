"""mkdocs hook: the generated parts of the reference pages.

* ``<!-- cli: MODULE -->`` on a line of its own becomes the reference of the click group in ``MODULE``
  (every command, its help and every option, as ``--help`` prints them), so docs/cli.md cannot fall
  behind the commands.
* ``::: inhernet.NAME`` becomes ``::: <module>.<qualname>`` of the object that ``inhernet.NAME`` is at
  run time. The API page names only top-level objects, which stay put while the modules beneath them
  move; and griffe (mkdocstrings' loader) resolves ``inhernet.plan`` to the submodule ``plan.py``
  rather than the function the package exports under that name (griffe issue 124).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import click

CLI_MARKER = re.compile(r"^<!-- cli: ([\w.]+) -->$", re.MULTILINE)
API_DIRECTIVE = re.compile(r"^::: (inhernet)\.(\w+)$", re.MULTILINE)


def on_config(config: Any) -> Any:
    """Put the repository's ``src`` first on ``sys.path``: the pages describe this checkout's code."""
    src = str(Path(config.config_file_path).resolve().parent / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return config


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Expand the CLI markers and point the API directives at each object's defining module."""
    markdown = CLI_MARKER.sub(lambda m: cli_reference(m.group(1)), markdown)
    return API_DIRECTIVE.sub(lambda m: f"::: {canonical_path(m.group(1), m.group(2))}", markdown)


def canonical_path(package: str, name: str) -> str:
    """``module.qualname`` of ``package.name``, the path griffe finds the object under."""
    obj = getattr(importlib.import_module(package), name)
    return f"{obj.__module__}.{obj.__qualname__}"


def find_group(module_name: str) -> click.Group:
    """The top-level click group of ``module_name`` (the one no other group of the module contains)."""
    module = importlib.import_module(module_name)
    groups = [v for v in vars(module).values() if isinstance(v, click.Group)]
    nested = {id(c) for g in groups for c in g.commands.values()}
    top = [g for g in groups if id(g) not in nested]
    if len(top) != 1:
        raise ValueError(f"{module_name}: expected one top-level click group, found {len(top)}")
    return top[0]


def cli_reference(module_name: str) -> str:
    """Markdown for every command of the click group in ``module_name``, in ``--help`` order."""
    group = find_group(module_name)
    program = module_name.split(".")[0].replace("_", "-")
    root = click.Context(group, info_name=program, **group.context_settings)
    parts = [_command_markdown(root, program, group, level=2)]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is None or command.hidden:
            continue
        context = click.Context(command, info_name=name, parent=root)
        parts.append(_command_markdown(context, f"{program} {name}", command, level=3))
    return "\n\n".join(parts)


def _command_markdown(context: click.Context, title: str, command: click.Command, level: int) -> str:
    usage = " ".join([title, *command.collect_usage_pieces(context)])
    lines = [f"{'#' * level} `{title}`", "", f"```text\n{usage}\n```", "", _help_markdown(command.help or "")]
    # arguments are in the usage line; their help records are bare names
    options = [p.get_help_record(context) for p in command.get_params(context) if isinstance(p, click.Option)]
    lines += ["", *(f"- `{opts}`: {_escape(text)}" if text else f"- `{opts}`" for opts, text in filter(None, options))]
    return "\n".join(lines)


def _help_markdown(text: str) -> str:
    """click's help text as markdown: ``\\b`` paragraphs (kept as written) become code blocks."""
    blocks = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        if paragraph.startswith("\b\n"):
            blocks.append("```text\n" + inspect.cleandoc(paragraph[2:]) + "\n```")
        elif paragraph.rstrip().endswith(":") and paragraph.count("\n") == 0:
            blocks.append(f"**{_escape(paragraph.strip())}**")
        else:
            blocks.append(_escape(" ".join(paragraph.split())))
    return "\n\n".join(blocks)


def _escape(text: str) -> str:
    """Escape HTML and emphasis characters outside backtick code spans (click help uses those as code)."""
    pieces = text.split("`")
    for i in range(0, len(pieces), 2):  # the even pieces lie outside code spans
        pieces[i] = pieces[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*").replace("_", r"\_")
    return "`".join(pieces)
