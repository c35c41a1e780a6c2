"""``samullm run``: run an application graph through the engine pool, real (vLLM) or simulated.

The app's requests are submitted as their upstream requests finish (synthetic prompts of the graph's
lengths, see ``runtime/app_runner.py``); the pool plans, runs and re-plans; the report says what happened
against the plan. On ``cpu`` clusters each model's one-core engine profile is measured first (cached).
Every input (app, cluster, backend, planner, output paths) is checked before anything runs, and the exit
code says whether every request was answered (``cli/outcome.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from samullm_lc.cli.outcome import ExitCode, fail, output_path, write_outputs
from samullm_lc.errors import PoolError, SamullmError
from samullm_lc.planner.planners import DEFAULT_PLANNER
from samullm_lc.runtime.engine_logs import TERMINAL, EngineLog

if TYPE_CHECKING:
    from samullm_lc.graph.app_graph import AppGraph
    from samullm_lc.planner.cluster import Cluster
    from samullm_lc.runtime.report import RunReport

console = Console(stderr=True)
DEMO_CLUSTER = "2xcpu"
VERBOSE_HELP = "Show the engines' own output (vLLM's logs) here instead of in the log file whose path is printed."


def run(
    app_path: Annotated[Path, typer.Argument(metavar="APP.json", help="Application graph (AppGraph JSON).")],
    cluster: Annotated[str, typer.Option(help="COUNTxHARDWARE or NODESxPER_NODExHARDWARE: e.g. 2xcpu here (one "
                                              "engine slot per core), 8xA100-80GB, 2x8xA100-80GB.")],
    backend: Annotated[str, typer.Option(help="vllm (real engines), ray (real engines as actors on the Ray cluster "
                                              "ray.init finds) or sim (the cost model on a virtual clock).")] = "vllm",
    planner: Annotated[str, typer.Option(help="The planner (see `samullm plan --help`).")] = DEFAULT_PLANNER,
    journal: Annotated[Path | None, typer.Option(help="SQLite journal: an interrupted run resumes from it.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the run report (JSON, mode 0600).")] = None,
    gantt: Annotated[Path | None, typer.Option(help="Draw the actual run (PNG; SVG, PDF by suffix).")] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a summary.")] = False,
    verbose: Annotated[bool, typer.Option(help=VERBOSE_HELP)] = False,
) -> None:
    """Run an app through the planner-driven engine pool and report plan vs actual."""
    from samullm_lc.cli.plan_command import _load_app

    try:
        app = _load_app(app_path)
        target = checked_run(cluster, backend=backend, planner=planner)
        outputs = run_outputs(report=report, gantt=gantt)
        if journal is not None:  # opened after the engine profiles are measured: a folder is refused now
            output_path(journal, "journal")
    except SamullmError as error:
        fail(error)
    result = run_app(app, target, backend=backend, planner=planner, journal=journal, seed=seed, verbose=verbose)
    raise typer.Exit(code=finish_run(result, outputs, as_json=as_json))


def checked_run(cluster: str, *, backend: str, planner: str) -> Cluster:
    """The cluster of a run, once its backend and planner are known names; ``ConfigError`` listing the choices."""
    from samullm_lc.planner import check_planner
    from samullm_lc.planner.cluster import Cluster
    from samullm_lc.runtime.pool import check_backend

    check_backend(backend)
    check_planner(planner)
    return Cluster.parse(cluster)


def run_outputs(*, report: Path | None, gantt: Path | None) -> dict[str, Path]:
    """The files a run will write, checked now (``outcome.output_path``): ``report`` and ``gantt`` if given."""
    outputs = {}
    if report is not None:
        outputs["report"] = output_path(report, "run report")
    if gantt is not None:
        outputs["gantt"] = output_path(gantt, "Gantt chart", chart=True)
    return outputs


def run_app(app: AppGraph, cluster: Cluster, *, backend: str, planner: str, journal: Path | None,
            seed: int, verbose: bool = False) -> RunReport:
    """Run ``app`` on ``cluster`` and return the RunReport; exits 2 if the run cannot start. The engines print to
    a log file whose path is printed (``runtime/engine_logs``), or here when ``verbose``.

    Failed requests are counted in the report; a failure of the pool's driver mid-run is added to the
    report's errors (its requests were failed with the cause), so the run still ends with a report.
    """
    from samullm_lc.profiling.pool_profiles import profiles_for
    from samullm_lc.runtime.app_runner import AppRun
    from samullm_lc.runtime.pool import EnginePool

    try:
        engine_log = EngineLog.open(verbose=verbose) if backend != "sim" else TERMINAL
        profiles = profiles_for(cluster, app.models(), backend=backend, engine_log=engine_log)
        pool = EnginePool(app, cluster, backend=backend, planner=planner, profiles=profiles, journal=journal,
                          seed=seed, engine_log=engine_log, verbose=verbose)
    except SamullmError as error:
        fail(error)
    try:
        with pool:
            AppRun(pool, app, seed=seed).start().wait()
    except KeyboardInterrupt:  # the pool failed what was outstanding; report what finished
        result = pool.report()
        result.interrupted = True
        result.errors.append("the run was interrupted (Ctrl-C); requests not finished by then failed"
                             + (", the journal keeps the finished ones" if journal is not None else ""))
        return result
    except PoolError as error:
        result = pool.report()
        if str(error) not in result.errors:
            result.errors.append(str(error))
        return result
    return pool.report()


def finish_run(result: RunReport, outputs: dict[str, Path], *, as_json: bool) -> ExitCode:
    """Print the report, then write its files; the exit code that says how the run went (``ExitCode``)."""
    if as_json:
        typer.echo(json.dumps(json.loads(result.model_dump_json()), indent=1))
    else:
        Console().print(result.summary(), highlight=False, markup=False)
    writes = []
    if "report" in outputs:
        writes.append(("run report", outputs["report"], result.save))
    if "gantt" in outputs:
        writes.append(("Gantt chart", outputs["gantt"], result.save_gantt))
    written = write_outputs(writes)
    if not result.ok:
        console.print(f"[red]error:[/red] the run finished with {result.requests_failed} failed request(s) "
                      f"and {len(result.errors)} error(s) of the run as a whole", highlight=False)
    if result.interrupted:
        return ExitCode.INTERRUPTED
    if not written:
        return ExitCode.NOT_WRITTEN
    return ExitCode.OK if result.ok else ExitCode.RUN_FAILED
