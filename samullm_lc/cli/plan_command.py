"""``samullm plan``: plan an application graph on a cluster, compare the planners, draw the plan (alone, or above
a baseline planner's plan on one time axis: ``--gantt-versus``).

Kept in its own file so that ``main.py`` stays a list of small commands; the planner is imported inside the
command, so ``samullm --help`` does not pay for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import typer
from rich.console import Console
from rich.table import Table

from samullm_lc.cli.outcome import ExitCode, fail, output_path, write_outputs
from samullm_lc.cli.run_command import VERBOSE_HELP
from samullm_lc.errors import ConfigError, DoesNotFitError, SamullmError
from samullm_lc.limits import CURVE_BATCHES, PLAN_SAMPLES
from samullm_lc.planner.planners import DEFAULT_PLANNER, EXHAUSTIVE_MAX_GPUS, EXHAUSTIVE_MAX_MODELS, ExhaustivePlanner

if TYPE_CHECKING:
    from samullm_lc.costmodel.profile import EngineProfile
    from samullm_lc.graph.app_graph import AppGraph
    from samullm_lc.planner.cluster import Cluster
    from samullm_lc.planner.plan import Plan

console = Console(stderr=True)

LOWER_BOUND_KEY = "lower_bound"
EXHAUSTIVE = ExhaustivePlanner.name
COMPARE_EXHAUSTIVE_MAX_MODELS = EXHAUSTIVE_MAX_MODELS - 1
"""--compare runs the exhaustive planner (unless it is the --planner) only on instances a size below the planner's
own limits (``planner.planners.EXHAUSTIVE_MAX_MODELS``): the small ones it is the yardstick for, where it answers in
seconds beside the others."""
COMPARE_EXHAUSTIVE_MAX_GPUS = EXHAUSTIVE_MAX_GPUS // 2
"""The GPU count above which --compare skips the exhaustive planner (half the planner's own limit)."""


def _load_app(path: Path) -> AppGraph:
    """Read an AppGraph JSON; ``ConfigError`` naming the file if it is missing, a folder or not a valid graph."""
    from samullm_lc.graph.app_graph import APP_FILE_FIX, AppGraph

    if path.is_dir() or not path.exists():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(f"app file {path} {problem}; {APP_FILE_FIX}")
    return AppGraph.load(path)


def _check_topology(topology: str | None) -> None:
    from samullm_lc.planner.cluster import Topology

    if topology is not None and topology not in get_args(Topology):
        raise ConfigError(f"unknown topology {topology!r}; choose one of {', '.join(get_args(Topology))}")


def _too_big_for_exhaustive(app: AppGraph, cluster: Cluster) -> str | None:
    """Why --compare skips the exhaustive planner on this instance, or None when it runs it."""
    models = len(app.models())
    if models <= COMPARE_EXHAUSTIVE_MAX_MODELS and cluster.num_gpus <= COMPARE_EXHAUSTIVE_MAX_GPUS:
        return None
    from samullm_lc.planner.cluster import device_word

    return (
        f"exhaustive search is for small instances (at most {COMPARE_EXHAUSTIVE_MAX_MODELS} models on "
        f"{COMPARE_EXHAUSTIVE_MAX_GPUS} {device_word(cluster)}; this is {models} on {cluster.num_gpus}); "
        f"add --planner {EXHAUSTIVE} to run it anyway"
    )


def _compare(
    app: AppGraph, cluster: Cluster, chosen: str, seed: int, samples: int, curve_batches: int,
    profiles: dict[str, EngineProfile] | None,
) -> tuple[dict[str, Plan], dict[str, str]]:
    """Every planner's plan, and why any planner was skipped."""
    from samullm_lc.planner import PLANNERS, plan_app

    plans: dict[str, Plan] = {}
    skipped: dict[str, str] = {}
    for name in PLANNERS:
        reason = _too_big_for_exhaustive(app, cluster) if name == EXHAUSTIVE and name != chosen else None
        if reason:
            skipped[name] = reason
            continue
        try:
            plans[name] = plan_app(app, cluster, name, seed=seed, num_samples=samples, curve_batches=curve_batches,
                                   profiles=profiles)
        except DoesNotFitError as error:  # per-model-pools: every model's engines at once may need more GPUs
            if name == chosen:
                raise
            skipped[name] = str(error)
    return plans, skipped


def plan(
    app_path: Annotated[Path, typer.Argument(metavar="APP.json", help="Application graph (AppGraph JSON).")],
    cluster: Annotated[str, typer.Option(help="COUNTxHARDWARE or NODESxPER_NODExHARDWARE, e.g. 8xA100-80GB or "
                                              "2x8xA100-80GB (see `samullm hardware`).")],
    topology: Annotated[
        str | None, typer.Option(help="nvswitch, nvlink-pairs or pcie (default: nvswitch if the GPU has NVLink).")
    ] = None,
    planner: Annotated[
        str, typer.Option(help="greedy, search, exhaustive, sequential, all-at-once, muxserve-like or per-model-pools.")
    ] = DEFAULT_PLANNER,
    samples: Annotated[int, typer.Option(min=1, help=(
        f"Output-length samples to plan on (reports the spread; at most {PLAN_SAMPLES.maximum})."))] = 1,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    curve_batches: Annotated[int | None, typer.Option(min=1, help=(
        "Batches each candidate simulation keeps (default: the planner's): more give more accurate curves "
        f"under KV pressure and slower planning (at most {CURVE_BATCHES.maximum})."))] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: the plan, or with --compare the estimates.")
    ] = False,
    compare: Annotated[
        bool,
        typer.Option(help=(
            "Run every planner and print their estimates side by side; with --json one object "
            f"planner -> estimated seconds, plus '{LOWER_BOUND_KEY}' (a lower bound on the makespan) and "
            f"'skipped' (planner -> reason): {EXHAUSTIVE} is skipped above {COMPARE_EXHAUSTIVE_MAX_MODELS} models or "
            f"{COMPARE_EXHAUSTIVE_MAX_GPUS} devices unless it is the --planner, per-model-pools where the models' engines "
            "do not fit the cluster at once."
        )),
    ] = False,
    gantt: Annotated[Path | None, typer.Option(
        help="Draw the --planner plan as a devices x time chart (PNG; SVG, PDF by suffix; mode 0600).")] = None,
    gantt_versus: Annotated[str | None, typer.Option(
        metavar="PLANNER",
        help="With --gantt: draw the --planner plan above this planner's plan (a baseline such as sequential), "
             "two panels on one time axis, each titled with its planner and estimated seconds.")] = None,
    verbose: Annotated[bool, typer.Option(help=VERBOSE_HELP)] = False,
) -> None:
    """Plan which models run together, with which parallelism, and estimate the end-to-end time."""
    try:
        from samullm_lc.planner import check_planner, lower_bound_seconds, plan_app
        from samullm_lc.planner.cluster import Cluster
        from samullm_lc.planner.curves import BATCHES_SIMULATED

        batches = curve_batches or BATCHES_SIMULATED
        check_planner(planner)
        _check_topology(topology)
        app = _load_app(app_path)
        target = Cluster.parse(cluster, topology)  # type: ignore[arg-type]
        _check_versus(gantt_versus, planner, gantt)
        if gantt is not None:
            output_path(gantt, "Gantt chart", chart=True)
        from samullm_lc.profiling.pool_profiles import profiles_for
        from samullm_lc.runtime.engine_logs import EngineLog

        profiles = profiles_for(target, app.models(), engine_log=EngineLog.open(verbose=True) if verbose else None)
        if compare:
            plans, skipped = _compare(app, target, planner, seed, samples, batches, profiles)
            bound = lower_bound_seconds(app, target, seed=seed, curve_batches=batches, profiles=profiles)
        else:
            plans = {planner: plan_app(app, target, planner, seed=seed, num_samples=samples, curve_batches=batches,
                                       profiles=profiles)}
            skipped = {}
        if gantt_versus is not None and gantt_versus not in plans:
            plans[gantt_versus] = plan_app(app, target, gantt_versus, seed=seed, num_samples=samples,
                                           curve_batches=batches, profiles=profiles)
    except SamullmError as error:
        fail(error)

    chosen = plans[planner]
    if compare:
        _print_comparison(plans, skipped, bound, planner, as_json)
    elif as_json:
        typer.echo(chosen.model_dump_json(indent=1))
    else:
        typer.echo(chosen.describe())
        typer.echo(f"planned in {chosen.planning_seconds:.2f} s")
    if gantt is not None:
        _write_gantt(gantt, [chosen] if gantt_versus is None else [chosen, plans[gantt_versus]])


def _check_versus(versus: str | None, planner: str, gantt: Path | None) -> None:
    """--gantt-versus names another known planner, and comes with --gantt; ``ConfigError`` with the fix."""
    from samullm_lc.planner import check_planner

    if versus is None:
        return
    check_planner(versus)
    if versus == planner:
        raise ConfigError(f"--gantt-versus {versus} names the --planner itself; name the baseline to draw beside "
                          f"it, e.g. --gantt-versus sequential")
    if gantt is None:
        raise ConfigError("--gantt-versus draws into the --gantt chart; add --gantt FILE (e.g. --gantt plan.png)")


def _write_gantt(path: Path, plans: list[Plan]) -> None:
    """Draw one plan, or a plan above a baseline's on one time axis; exit 3 if the file cannot be written."""
    from samullm_lc.planner.gantt import draw_gantt, draw_gantt_comparison

    def draw(target: Path) -> Path:
        return draw_gantt(plans[0], target) if len(plans) == 1 else draw_gantt_comparison(plans, target)

    if not write_outputs([("Gantt chart", path, draw)]):
        raise typer.Exit(code=ExitCode.NOT_WRITTEN)
    beside = f" above the {plans[1].planner} plan" if len(plans) > 1 else ""
    console.print(f"gantt chart of the {plans[0].planner} plan{beside} written to {path}")


def _print_comparison(
    plans: dict[str, Plan], skipped: dict[str, str], bound: float, chosen: str, as_json: bool
) -> None:
    """Every planner's estimate: one JSON object, or a table sorted fastest first."""
    if as_json:
        payload: dict[str, object] = {name: plan.estimated_seconds for name, plan in plans.items()}
        payload[LOWER_BOUND_KEY] = bound
        if skipped:
            payload["skipped"] = skipped
        typer.echo(json.dumps(payload, indent=1))
        return
    reference = plans[chosen].estimated_seconds
    table = Table("planner", "estimated s", f"{chosen} speedup", "planning s", "stages")
    for name, result in sorted(plans.items(), key=lambda item: item[1].estimated_seconds):
        table.add_row(name, f"{result.estimated_seconds:.1f}", f"{result.estimated_seconds / reference:.2f}x",
                      f"{result.planning_seconds:.2f}", str(len(result.stages)))
    for name in skipped:
        table.add_row(name, "skipped", "-", "-", "-")
    table.add_row(LOWER_BOUND_KEY, f"{bound:.1f}", "", "", "")
    Console().print(table)
    for name, reason in skipped.items():
        typer.echo(f"{name} skipped: {reason}")
