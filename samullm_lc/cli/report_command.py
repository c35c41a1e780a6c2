"""``samullm report RUN.json``: show a saved run report, and draw it as charts and a self-contained HTML page.

The report is the JSON that ``samullm run --report``, ``samullm demo`` and the examples' ``--report`` write.
The command prints the plan-vs-actual summary (or the report as JSON), then writes three files into one
folder, by default ``<report name>-report/`` beside the report (so that reports sharing a folder never
overwrite each other's pages): ``gantt.png`` (the initial plan as estimated above the actual run, one time
axis), ``throughput.png`` (each model's output tokens per second over the run) and ``report.html`` (headline,
per-model table, both charts embedded, planning decisions, engines, errors; opens offline in any browser).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from samullm_lc.cli.outcome import ExitCode, fail, output_path, write_outputs
from samullm_lc.errors import SamullmError

console = Console(stderr=True)

GANTT_FILE = "gantt.png"
THROUGHPUT_FILE = "throughput.png"
PAGE_FILE = "report.html"
OUT_SUFFIX = "-report"
"""The default folder of a report's files is its name without the suffix plus this, beside it."""


def default_out(report_path: Path) -> Path:
    """Where ``samullm report`` writes without ``--out``: ``results/run.json`` -> ``results/run-report/``."""
    return report_path.with_name(report_path.stem + OUT_SUFFIX)


def report(
    report_path: Annotated[Path, typer.Argument(metavar="RUN.json", help=(
        "A run report: the JSON that `samullm run --report`, `samullm demo` (results/demo/run.json) or an "
        "example's --report writes."))],
    out: Annotated[Path | None, typer.Option(help=(
        f"Folder for {GANTT_FILE} (plan above actual run), {THROUGHPUT_FILE} (output tokens/s per model) and "
        f"{PAGE_FILE} (the whole report on one self-contained page); files mode 0600. "
        f"Default: <report name>{OUT_SUFFIX}/ beside the report, e.g. results/demo/run{OUT_SUFFIX}/."))] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of the summary.")] = False,
) -> None:
    """Show a run report (plan vs actual), and write its Gantt chart, throughput chart and HTML page."""
    from samullm_lc.runtime.report import RunReport

    folder = out if out is not None else default_out(report_path)
    files = {name: folder / name for name in (GANTT_FILE, THROUGHPUT_FILE, PAGE_FILE)}
    try:
        result = RunReport.load(report_path)
        output_path(files[GANTT_FILE], "plan-vs-actual Gantt chart", chart=True)
        output_path(files[THROUGHPUT_FILE], "throughput chart", chart=True)
        output_path(files[PAGE_FILE], "HTML report")
    except SamullmError as error:
        fail(error)

    if as_json:
        typer.echo(json.dumps(json.loads(result.model_dump_json()), indent=1))
    else:
        Console().print(result.summary(decisions=True), highlight=False, markup=False)
    writes = [
        ("plan-vs-actual Gantt chart", files[GANTT_FILE], result.save_plan_vs_actual),
        ("throughput chart", files[THROUGHPUT_FILE], result.save_throughput),
        ("HTML report", files[PAGE_FILE], result.save_html),
    ]
    written = [write for write in writes if write_outputs([write])]
    for what, path, _ in written:
        console.print(f"{what}: {path}", highlight=False)
    if len(written) < len(writes):
        raise typer.Exit(code=ExitCode.NOT_WRITTEN)
