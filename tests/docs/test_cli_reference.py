"""The CLI reference page (rendered at build time by ``docs/hooks/cli_reference.py``) agrees with ``--help``.

Every command of the Typer app, and every argument and option that ``samullm --help`` and ``samullm CMD
--help`` print, is on the page, in the command's own section; so are the exit codes.
"""

from __future__ import annotations

import importlib.util
import re

import pytest
import typer
from typer.testing import CliRunner

from samullm_lc.cli.main import app
from samullm_lc.cli.outcome import ExitCode
from tests.docs.markdown_blocks import ROOT

HOOK = ROOT / "docs" / "hooks" / "cli_reference.py"
PANEL_ROW = re.compile(r"^│\s+(?:\*\s+)?(?P<first>-{1,2}[\w-]+|[A-Za-z][\w.-]*)(?:[ ,/]+(?P<second>--?[\w-]+))?")
"""A row of a rich help panel: an option's names (``--compare  --no-compare``), an argument or a command."""


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference() -> str:
    return _hook().render_cli_reference()


def _sections(reference: str) -> dict[str, str]:
    """Command name -> its part of the page."""
    parts = re.split(r"^## samullm (\S+)\n", reference, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "240", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def _panel_names(help_text: str, panel: str) -> list[str]:
    """The names in the first column of one rich help panel (``Options``, ``Arguments``, ``Commands``)."""
    names, inside = [], False
    for line in help_text.splitlines():
        if line.startswith("╭"):
            inside = f" {panel} " in line
        elif line.startswith("╰"):
            inside = False
        elif inside and (row := PANEL_ROW.match(line)):
            names += [name for name in row.groupdict().values() if name]
    return names


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def _commands() -> dict:
    return typer.main.get_command(app).commands


def test_the_page_has_every_command_of_the_app_and_of_help(reference):
    sections = _sections(reference)
    commands = _commands()
    listed = _panel_names(_help(), "Commands")
    assert set(listed) == set(commands), "samullm --help and the Typer group list different commands"
    assert list(sections) == list(commands)
    for option in _panel_names(_help(), "Options"):
        assert _mentions(reference.split("\n## ")[0], option), f"samullm {option} is not on the page"


@pytest.mark.parametrize("name", list(_commands()))
def test_every_option_and_argument_of_a_command_is_in_its_section(reference, name):
    section = _sections(reference)[name]
    help_text = _help(name)
    shown = _panel_names(help_text, "Options") + _panel_names(help_text, "Arguments")
    assert shown, f"no options parsed from `samullm {name} --help`:\n{help_text}"
    missing = [option for option in shown if not _mentions(section, option)]
    assert not missing, f"`samullm {name} --help` shows {missing}, which the CLI reference lacks"
    command = _commands()[name]
    for param in command.params:  # and the group's own view, hidden parameters aside
        names = [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else [
            param.metavar or param.name]
        assert param.hidden or all(_mentions(section, option) for option in names), (name, names)
    if command.epilog:
        assert " ".join(command.epilog.split()) in section


def test_the_exit_codes_are_on_the_page(reference):
    table = reference.split("## Exit codes")[1]
    for code in ExitCode:
        row = re.search(rf"^\| {code.value} \| `{code.name}` \| (.+) \|$", table, re.MULTILINE)
        assert row and row.group(1).strip(), f"exit code {code.value} has no row with a meaning"


def test_the_page_and_the_site_use_the_hook():
    page = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    assert _hook().MARKER in page
    assert "docs/hooks/cli_reference.py" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
