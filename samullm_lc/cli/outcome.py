"""How a ``samullm`` command ends: its exit code, its error message, and the files it writes.

Every command checks the paths it will write before anything runs (``output_path``: a mistake there costs
nothing), prints its results before writing any file, and writes with ``write_outputs``, which reports a
failed write with its path and reason and goes on with the others: a full disk after an hour-long run
loses a file, never the results, which are on the terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from samullm_lc.errors import SamullmError
from samullm_lc.user_files import check_writable

console = Console(stderr=True)


class ExitCode(IntEnum):
    """What a command's exit status means (docs/runtime.md#exit-codes)."""

    OK = 0  # done; for `run` and `demo`: every request answered and the run had no errors
    RUN_FAILED = 1  # the run finished, but requests failed or the run had errors (summary printed, files written)
    BAD_INPUT = 2  # an input or option is wrong (the message names it and the fix); nothing ran
    NOT_WRITTEN = 3  # it finished and printed its results, but a report, profile or chart could not be written
    INTERRUPTED = 130  # stopped by Ctrl-C: what had finished is printed and written (the shell's code for SIGINT)


EXIT_CODES_HELP = (
    "Exit codes: 0 every request answered; 1 the run finished but requests failed or the run had errors; "
    "2 bad input, nothing ran; 3 the run finished but a report or chart could not be written (the results "
    "are printed; 3 wins over 1); 130 interrupted by Ctrl-C (what finished is printed and written)."
)
WRITE_EXIT_CODES_HELP = (
    "Exit codes: 0 done; 2 bad input, nothing ran; 3 the results were printed but a file could not be written."
)


def fail(error: str | SamullmError, code: ExitCode = ExitCode.BAD_INPUT) -> NoReturn:
    """Print ``error`` on stderr and end the command (by default: bad input, nothing ran)."""
    console.print(f"[red]error:[/red] {error}", highlight=False)
    raise typer.Exit(code=code)


def output_path(path: Path, what: str, *, chart: bool = False) -> Path:
    """``path`` checked before a run: parent folders created, not a folder, writable, and for a ``chart`` a
    format matplotlib writes. ``ConfigError`` naming the ``what`` file and the fix otherwise."""
    if chart:
        from samullm_lc.planner.gantt import chart_format  # matplotlib: loaded only for a chart

        chart_format(path)
    return check_writable(path, what=what)


def write_outputs(writes: list[tuple[str, Path, Callable[[Path], object]]]) -> bool:
    """Run each ``(what, path, write)``; a failure is printed with its path and reason and the rest still run.

    Returns whether every file was written. Called after the results are printed, so nothing is lost.
    """
    written = True
    for what, path, write in writes:
        try:
            write(path)
        except (OSError, ValueError, SamullmError) as exc:
            console.print(f"[red]error:[/red] could not write the {what} to {path}: {exc}; the results are "
                          "printed above", highlight=False)
            written = False
    return written
