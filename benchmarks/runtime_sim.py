"""The engine pool's ``sim`` backend on the paper's four apps: a dry run of each at N = 1,000 on 8 simulated A100s.

The issue's acceptance: the ``sim`` backend runs each paper app (``scripts/build_paper_apps.py``: ensemble,
router, chain-summary, mixed) at N = 1,000 on 8 x A100-80GB end to end in under 10 s, and the run report
shows the re-planning decisions it took. Each app runs through ``EnginePool(app, "8xA100-80GB",
backend="sim")`` with the default planner, its requests submitted by ``AppRun`` (downstream requests as
their upstream requests finish), exactly as a real run would submit them; the cost model stands in for
vLLM on a virtual clock.

Reports, per app: wall seconds of the whole run (pool start, every plan and re-plan, the simulated engines,
pool close), simulated seconds, the initial plan's estimate and its error against the simulated run, the
number of planning decisions, and every decision (when, why, the stage it started). Writes
``docs/results/runtime-sim.md``. CPU only, about a minute; run it when no engine benchmark is running.

Run: ``/work/main/.venv/bin/python benchmarks/runtime_sim.py [--n 1000] [--apps ensemble router ...]``
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import common
import numpy as np

from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.graph.paper_apps import PAPER_APPS
from samullm_lc.runtime.app_runner import AppRun
from samullm_lc.runtime.pool import EnginePool
from samullm_lc.runtime.report import RunReport
from samullm_lc.runtime.requests import GenerationResult

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "results" / "runtime-sim.md"
CLUSTER = "8xA100-80GB"
N = 1000
WALL_GOAL_SECONDS = 10.0
TOKEN_IDS = np.arange(100, 200)
STAGE_ENTRIES_SHOWN = 4  # a stage of the mixed app runs up to 14 models; the table shows the first few
TIMEOUT_SECONDS = 600.0


@dataclass
class AppResult:
    """One app's dry run: wall and CPU seconds, and the pool's report."""

    app: str
    n: int
    models: int
    requests: int
    wall_seconds: float
    cpu_seconds: float
    failed: int
    report: RunReport


def run_app(name: str, build: Callable[[int, int], AppGraph], n: int, seed: int) -> AppResult:
    """Run one paper app through the sim-backed pool, from pool start to pool close."""
    app = build(n, seed)
    wall, cpu = time.perf_counter(), time.process_time()
    with EnginePool(app, CLUSTER, backend="sim", progress=False, seed=seed) as pool:
        outcomes = AppRun(pool, app, token_ids=TOKEN_IDS, seed=seed).start().wait(TIMEOUT_SECONDS)
        pool.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    failed = sum(not isinstance(o, GenerationResult) for results in outcomes.values() for o in results)
    return AppResult(app=name, n=n, models=len(app.models()), requests=sum(node.num_requests for node in app.nodes),
                     wall_seconds=wall, cpu_seconds=cpu, failed=failed, report=pool.report())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _planning_seconds(result: AppResult) -> float:
    return sum(p.planning_seconds for p in result.report.replans)


def _stage(entries: list[str]) -> str:
    """A stage's engines, the first few in full and a count of the rest."""
    shown = "; ".join(entries[:STAGE_ENTRIES_SHOWN]) or "nothing to run"
    if len(entries) > STAGE_ENTRIES_SHOWN:
        shown += f"; and {len(entries) - STAGE_ENTRIES_SHOWN} more"
    return shown.replace("|", "\\|")


def summary_table(results: list[AppResult]) -> list[str]:
    lines = [("| app | models | requests | wall s | CPU s | simulated s | initial estimate s | estimate error | "
             "planning decisions | planning s | failed |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rep = r.report
        planning = _planning_seconds(r)
        lines.append(f"| {r.app} | {r.models} | {r.requests:,} | **{r.wall_seconds:.2f}** | {r.cpu_seconds:.2f} | "
                     f"{rep.seconds:,.0f} | {rep.estimated_seconds:,.0f} | {_pct(rep.estimation_error)} | "
                     f"{len(rep.replans)} | {planning:.2f} | {r.failed} |")
    return lines


def model_table(result: AppResult) -> list[str]:
    lines = ["| model | requests | output tokens | estimated finish s | simulated finish s | error |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in result.report.models:
        estimated = f"{m.estimated_finish_seconds:,.0f}" if m.estimated_finish_seconds is not None else "-"
        actual = f"{m.last_finish_seconds:,.0f}" if m.last_finish_seconds is not None else "-"
        lines.append(f"| {m.model} | {m.requests_done:,} | {m.output_tokens:,} | {estimated} | {actual} | "
                     f"{_pct(m.finish_error)} |")
    return lines


def replan_table(result: AppResult) -> list[str]:
    lines = ["| at s (simulated) | why | planning s | estimated remaining s | stage started |",
             "|---:|---|---:|---:|---|"]
    for r in result.report.replans:
        lines.append(f"| {r.at_seconds:,.1f} | {r.reason.replace('|', '/')} | {r.planning_seconds:.2f} | "
                     f"{r.estimated_remaining_seconds:,.0f} | {_stage(r.stage)} |")
    return lines


def machine() -> str:
    """The machine line of the results page."""
    return common.machine()


def render(results: list[AppResult], host: str, seed: int, command: str) -> str:
    slowest = max(results, key=lambda r: r.wall_seconds)
    met = slowest.wall_seconds < WALL_GOAL_SECONDS and all(r.failed == 0 for r in results)
    lines = [
        "# Engine pool, simulated backend, on the paper's apps",
        "",
        (f"Generated by `benchmarks/runtime_sim.py` on {host}, {datetime.date.today().isoformat()}. Each paper app "
        f"(`scripts/build_paper_apps.py`, seed {seed}) at N = {results[0].n:,} runs end to end through "
        f"`EnginePool(app, \"{CLUSTER}\", backend=\"sim\")` with the default planner (`search`); `AppRun` submits "
        "its requests, downstream ones as their upstream requests finish. The cost model (analytic A100 latency, "
        "modelled load times, output lengths sampled from each model's distribution) stands in for vLLM on a "
        "virtual clock, so the run exercises the real driver: plans, re-plans on every model finish and on stages "
        "that overrun their estimate, engine starts and stops, request dispatch."),
        "",
        "## Summary",
        "",
        (f"- Slowest app: **{slowest.app}, {slowest.wall_seconds:.2f} s** wall end to end (goal under "
        f"{WALL_GOAL_SECONDS:g} s for every app: **{'met' if met else 'not met'}**); "
        f"{_planning_seconds(slowest):.1f} s of it in the planner ({len(slowest.report.replans)} planning decisions)."),
        "- Over the goal: " + (", ".join(f"{r.app} {r.wall_seconds:.2f} s" for r in results
                                        if r.wall_seconds >= WALL_GOAL_SECONDS) or "none") + ".",
        "- Every run report lists its re-planning decisions (below, per app).",
        "",
        ("`wall s` runs from creating the pool to closing it (planning included); `CPU s` is this process's CPU "
        "time over the same span; `simulated s` is the virtual clock at the last result; `initial estimate s` is "
        "the first plan's estimate of the whole run, and `estimate error` is (estimate - simulated) / simulated. "
        "The simulated run differs from the plan's estimate because it samples its own output lengths, and "
        "because requests of downstream nodes reach the engines one by one as their upstream requests finish."),
        "",
        *summary_table(results),
    ]
    for result in results:
        lines += ["", f"## {result.app}", "", "Per model:", "", *model_table(result), "",
                  (f"Planning decisions ({len(result.report.replans)}; stages of more than {STAGE_ENTRIES_SHOWN} "
                  "engines are cut short):"), "", *replan_table(result)]
    lines += ["", *common.reproduce(command)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--apps", nargs="+", default=None, help="app names (default: all four)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    args = parser.parse_args()

    names = args.apps or list(PAPER_APPS)
    host = machine()
    results = []
    for name in names:
        result = run_app(name, PAPER_APPS[name], args.n, args.seed)
        results.append(result)
        rep = result.report
        print(f"{name}: wall {result.wall_seconds:.2f} s, simulated {rep.seconds:.0f} s, estimated "
              f"{rep.estimated_seconds:.0f} s ({_pct(rep.estimation_error)}), {len(rep.replans)} decisions, "
              f"{result.failed} failed", flush=True)
    command = "/work/main/.venv/bin/python benchmarks/runtime_sim.py"
    if args.n != N:
        command += f" --n {args.n}"
    if args.apps:
        command += " --apps " + " ".join(args.apps)
    if args.seed:
        command += f" --seed {args.seed}"
    text = render(results, host, args.seed, command)
    common.publish(text, REPORT, write=not args.no_write)


if __name__ == "__main__":
    main()
