"""mkdocs hook: the CLI reference page, rendered at build time from the Typer app itself.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it with every
command of ``samullm_lc.cli.main.app`` (usage, help, arguments and options with their defaults, epilog) and the
exit codes of ``samullm_lc.cli.outcome.ExitCode`` (each with the comment beside it in the source). Nothing is
written by hand, so the page cannot drift from ``samullm --help``; ``tests/docs/test_cli_reference.py`` checks
that every command and option of ``--help`` is on it.
"""

from __future__ import annotations

import inspect
import io
import tokenize
from typing import Any

MARKER = "<!-- cli-reference -->"
PAGE = "reference/cli.md"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """mkdocs event: fill the CLI reference page's marker."""
    if page.file.src_uri != PAGE:
        return markdown
    return markdown.replace(MARKER, render_cli_reference())


def render_cli_reference() -> str:
    """Markdown for the whole ``samullm`` command: global options, each command, the exit codes."""
    import typer

    from samullm_lc.cli.main import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="samullm")  # the click Context class Typer's commands use
    parts = [
        f"```text\n{group.get_usage(root)}\n```\n",
        (group.help or "").strip() + "\n",
        _params_table(group, root),
        "Commands: " + ", ".join(f"[`{name}`](#samullm-{name})" for name in group.commands) + ".\n",
    ]
    for name, command in group.commands.items():
        parts.append(_command(name, command, root))
    parts.append(_exit_codes())
    return "\n".join(parts)


def _command(name: str, command: Any, root: Any) -> str:
    context = command.context_class(command, info_name=name, parent=root)
    lines = [f"## samullm {name}\n", (command.help or "").strip() + "\n",
             f"```text\n{command.get_usage(context)}\n```\n", _params_table(command, context)]
    if command.epilog:
        lines.append(command.epilog.strip() + " ([all exit codes](#exit-codes))\n")
    return "\n".join(lines)


def _params_table(command: Any, context: Any) -> str:
    rows = ["| argument or option | meaning |", "|---|---|"]
    for param in command.get_params(context):
        record = param.get_help_record(context)
        if param.hidden or record is None:
            continue
        names, meaning = record
        rows.append(f"| `{_cell(names)}` | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _exit_codes() -> str:
    """The ``ExitCode`` members as a table, each with the comment written beside it in ``outcome.py``."""
    from samullm_lc.cli import outcome

    comments = _member_comments(inspect.getsource(outcome.ExitCode))
    rows = ["## Exit codes\n", (outcome.ExitCode.__doc__ or "").strip().split(" (")[0] + ":\n",
            "| code | name | meaning |", "|---|---|---|"]
    for member in outcome.ExitCode:
        rows.append(f"| {member.value} | `{member.name}` | {_cell(comments.get(member.name, ''))} |")
    return "\n".join(rows) + "\n"


def _member_comments(source: str) -> dict[str, str]:
    """``NAME = value  # comment`` lines of a class body: NAME -> comment."""
    comments: dict[str, str] = {}
    name = None
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.line.lstrip().startswith(token.string + " ="):
            name = token.string
        elif token.type == tokenize.COMMENT and name is not None:
            comments[name] = token.string.lstrip("# ").strip()
            name = None
        elif token.type == tokenize.NEWLINE:
            name = None
    return comments
