"""``samullm run``: run an application graph through the engine pool, real (vLLM) or simulated.

The app's requests are submitted as their upstream requests finish (synthetic prompts of the graph's
lengths, see ``runtime/app_runner.py``); the pool plans, runs and re-plans; the report says what happened
against the plan. On ``cpu`` clusters each model's one-core engine profile is measured first (cached).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from samullm_lc.errors import SamullmError

console = Console(stderr=True)
DEMO_CLUSTER = "2xcpu"


def run(
    app_path: Annotated[Path, typer.Argument(metavar="APP.json", help="Application graph (AppGraph JSON).")],
    cluster: Annotated[str, typer.Option(help="COUNTxHARDWARE: e.g. 2xcpu here (one engine slot per core), 8xA100-80GB.")],
    backend: Annotated[str, typer.Option(help="vllm (real engines) or sim (the cost model on a virtual clock).")] = "vllm",
    planner: Annotated[str, typer.Option(help="The planner (see `samullm plan --help`).")] = "search",
    journal: Annotated[Path | None, typer.Option(help="SQLite journal: an interrupted run resumes from it.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the run report (JSON).")] = None,
    gantt: Annotated[Path | None, typer.Option(help="Draw the actual run (PNG).")] = None,
    seed: int = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a summary.")] = False,
) -> None:
    """Run an app through the planner-driven engine pool and report plan vs actual."""
    from samullm_lc.cli.plan_command import _fail, _load_app

    try:
        result = run_app(_load_app(app_path), cluster, backend=backend, planner=planner, journal=journal,
                              seed=seed)
    except SamullmError as error:
        _fail(error)
    emit_report(result, report=report, gantt=gantt, as_json=as_json)


def run_app(app, cluster: str, *, backend: str, planner: str, journal: Path | None, seed: int):
    """Run ``app`` on ``cluster``; returns the RunReport. Failed requests are counted in the report."""
    from samullm_lc.planner.cluster import Cluster
    from samullm_lc.runtime.app_runner import AppRun
    from samullm_lc.runtime.pool import EnginePool

    target = Cluster.parse(cluster)
    profiles = None
    if target.spec.kind == "cpu":
        from samullm_lc.profiling.pool_profiles import pool_profiles

        console.print(f"engine profiles of {', '.join(app.models())} on one core (measured once, then cached)")
        profiles = pool_profiles(app.models())
    with EnginePool(app, target, backend=backend, planner=planner, profiles=profiles, journal=journal,
                    seed=seed) as pool:
        AppRun(pool, app, seed=seed).start().wait()
    return pool.report()


def emit_report(result, *, report: Path | None, gantt: Path | None, as_json: bool) -> None:
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        result.save(report)
    if gantt is not None:
        gantt.parent.mkdir(parents=True, exist_ok=True)
        result.save_gantt(gantt)
    if as_json:
        typer.echo(json.dumps(json.loads(result.model_dump_json()), indent=1))
    else:
        Console().print(result.summary(), highlight=False, markup=False)
