"""Planning time at 10,000 pipeline inputs, and what the scale model costs in accuracy.

The acceptance goal: ``plan_app`` with the default planner on 8 x A100-80GB takes at most 2 s for a graph scaled
to 10,000 inputs: the paper's mixed app (``examples/apps/mixed.json``, 19 requests per input: 190,000 requests)
and a chained-summary graph (the traced ``examples/graphs/chain_summary.json``, a running summary of 1 to 5
chained calls per input and a judge, with its example's GPU models). The traced mixed example (all five traced
pipelines side by side, 200,000 requests) is timed too.

Per case: the planning CPU and wall seconds of ``plan_app`` (median of ``REPEATS`` calls, each after the machine is
idle: ``common.measure``), the scale model it used (``samullm_lc/planner/scale_model.py``: 1 = every request
replayed), its estimate; then the same plan replayed on every request (``evaluate_plan(..., scale_model=None)``) and
the plan made on every request (``plan_app(..., scale_model=None)``), with their CPU seconds. "estimate error" is
the scale model's estimate against the full replay of the same plan; "plan vs full planning" is the full replay of
the scale model's plan against the plan made on every request (what choosing on the scale model costs). For the
paper's mixed app the scale model is also varied (1/4, 1/8, 1/16 of the inputs).

Writes ``docs/results/planner-scale.md``.
Run: ``/work/main/.venv/bin/python benchmarks/planner_scale.py [--inputs 10000] [--no-write]``
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import common
from traced_graphs import traced_app

from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.planner import Cluster, Plan, evaluate_plan, plan_app
from samullm_lc.planner.context import build_app_options
from samullm_lc.planner.scale_model import DEFAULT_SCALE_MODEL, ScaleModelRule, choose_scale

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "results" / "planner-scale.md"
CLUSTER = "8xA100-80GB"
GOAL_SECONDS = 2.0
REPEATS = 3
IDLE_WAIT_SECONDS = 180.0  # the longest wait for idle cores before a timed plan (other jobs share the machine)
CASES: dict[str, Callable[[], AppGraph]] = {
    "mixed (paper app)": lambda: AppGraph.load(ROOT / "examples" / "apps" / "mixed.json"),
    "chain_summary (traced)": lambda: traced_app("chain_summary"),
    "mixed (traced)": lambda: traced_app("mixed"),
}
GOAL_CASES = ("mixed (paper app)", "chain_summary (traced)")
VARIED = "mixed (paper app)"
VARIED_RULES = (ScaleModelRule(above_requests=0, requests=48_000), ScaleModelRule(above_requests=0, requests=24_000),
                DEFAULT_SCALE_MODEL)


@dataclass
class Case:
    """One graph at the benchmark's size: the default plan's timing and estimate, and the full-replay checks."""

    name: str
    requests: int
    scale: int
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    foreign: list[float] = field(default_factory=list)  # CPU seconds other processes used during each timed plan
    estimate: float = 0.0
    full_replay: float = 0.0
    full_plan: float = 0.0
    full_plan_cpu: float = 0.0
    full_replay_cpu: float = 0.0


def timed(function: Callable[[], object]) -> tuple[object, float, float]:
    """``function()`` with its CPU and wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def measured(label: str, function: Callable[[], object]) -> tuple[object, float, float, float]:
    """``timed(function)`` once the cores are idle (waiting at most ``IDLE_WAIT_SECONDS``), run again (up to
    ``common.MAX_ATTEMPTS`` times) while other processes take more than ``common.DISTURBED_SHARE`` of the machine;
    with the CPU seconds other processes used during the last run."""
    for attempt in range(1, common.MAX_ATTEMPTS + 1):
        common.wait_until_idle(IDLE_WAIT_SECONDS)
        busy, own = common.busy_cpu_seconds(), common.own_cpu_seconds()
        result, cpu, wall = timed(function)
        foreign = max(0.0, (common.busy_cpu_seconds() - busy) - (common.own_cpu_seconds() - own))
        print(f"-- {label}: {cpu:.2f} CPU s, {wall:.2f} s; other processes used {foreign:.2f} CPU s", flush=True)
        if foreign <= common.DISTURBED_SHARE * len(os.sched_getaffinity(0)) * wall or attempt == common.MAX_ATTEMPTS:
            return result, cpu, wall, foreign
    raise AssertionError("unreachable")


def time_case(name: str, app: AppGraph, cluster: Cluster) -> tuple[Case, Plan]:
    """Time the default plan of ``app`` (``REPEATS`` calls, the heap collected before each)."""
    case = Case(name=name, requests=sum(n.num_requests for n in app.nodes),
                scale=choose_scale(app, build_app_options(app, cluster), DEFAULT_SCALE_MODEL))
    plan = None
    for repeat in range(REPEATS):
        gc.collect()
        plan, cpu, wall, foreign = measured(f"{name}: plan {repeat + 1}", lambda: plan_app(app, cluster))
        case.cpu.append(cpu)
        case.wall.append(wall)
        case.foreign.append(foreign)
    case.estimate = plan.estimated_seconds
    return case, plan


def check_case(case: Case, app: AppGraph, plan: Plan, cluster: Cluster) -> None:
    """Replay the plan on every request and plan on every request."""
    case.full_replay, case.full_replay_cpu, _ = timed(lambda: evaluate_plan(app, cluster, plan, scale_model=None))
    full, case.full_plan_cpu, _ = timed(lambda: plan_app(app, cluster, scale_model=None))
    case.full_plan = full.estimated_seconds
    print(f"{case.name}: {case.requests:,} requests, scale 1/{case.scale}, plan CPU {statistics.median(case.cpu):.2f} "
          f"s, estimate {case.estimate:,.0f} s, full replay {case.full_replay:,.0f} s, full plan {case.full_plan:,.0f} s",
          flush=True)


def varied_scales(app: AppGraph, cluster: Cluster, full_plan: float) -> list[tuple[int, float, float, float, float]]:
    """(scale, plan CPU s, estimate, full replay of its plan, full replay CPU s) per rule of ``VARIED_RULES``."""
    rows = []
    options = build_app_options(app, cluster)
    for rule in VARIED_RULES:
        plan, cpu, _ = timed(lambda rule=rule: plan_app(app, cluster, scale_model=rule))
        replay, replay_cpu, _ = timed(lambda plan=plan: evaluate_plan(app, cluster, plan, scale_model=None))
        rows.append((choose_scale(app, options, rule), cpu, plan.estimated_seconds, replay, replay_cpu))
        print(f"  scale 1/{rows[-1][0]}: {cpu:.2f} s, estimate {plan.estimated_seconds:,.0f} s, full replay "
              f"{replay:,.0f} s (full plan {full_plan:,.0f} s)", flush=True)
    return rows


def _pct(value: float, reference: float) -> str:
    return f"{100 * (value / reference - 1):+.1f}%"


def report(cases: list[Case], varied: list[tuple[int, float, float, float, float]], inputs: int, command: str,
           wall_seconds: float) -> str:
    """The markdown page."""
    goal = [c for c in cases if c.name in GOAL_CASES]
    worst = max(statistics.median(c.cpu) for c in goal)
    worst_first = max(c.cpu[0] for c in goal)
    lines = [
        "# Planning time at 10,000 inputs",
        "",
        (f"Generated by `benchmarks/planner_scale.py` on {common.machine()}; {wall_seconds:.0f} s in all. Cluster "
        f"{CLUSTER} (NVSwitch), default planner (`search`), seed 0, each graph scaled to {inputs:,} inputs with "
        "`AppGraph.scaled`. Planning times are CPU seconds of `plan_app` (the planner is single-threaded), median of "
        f"{REPEATS} calls in one process, the heap collected before each (the first call of a graph pays for "
        "building its models' latency tables), each started once the cores "
        f"were idle or after {IDLE_WAIT_SECONDS:.0f} s of waiting, and repeated while other processes took more than "
        f"{common.DISTURBED_SHARE:.0%} of the machine; wall seconds beside them, and the CPU seconds other "
        "processes used during the timed calls (the cores are shared, so a busy machine slows the planner's CPU "
        "time too)."),
        "",
        (f"- Goal: at most {GOAL_SECONDS:g} s for the paper's mixed app and the chained-summary graph: "
        f"**{'met' if worst <= GOAL_SECONDS else 'not met'}** (slowest median {worst:.2f} s; slowest first call "
        f"{worst_first:.2f} s)."),
        (f"- Apps of more than {DEFAULT_SCALE_MODEL.above_requests:,} requests are planned on a scale model of about "
        f"{DEFAULT_SCALE_MODEL.requests:,} requests (`ScaleModelRule`); smaller ones on every request."),
        "",
        ("| graph | requests | scale model | plan CPU s (first call) | plan wall s | others' CPU s | estimate s | "
         "full replay of the plan s | estimate error | full planning s (CPU s) | plan vs full planning |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        scale = "every request" if c.scale == 1 else f"1/{c.scale} of the inputs"
        lines.append(
            f"| {c.name} | {c.requests:,} | {scale} | {statistics.median(c.cpu):.2f} ({c.cpu[0]:.2f}) | "
            f"{statistics.median(c.wall):.2f} | "
            f"{sum(c.foreign):.1f} | {c.estimate:,.0f} | {c.full_replay:,.0f} | {_pct(c.estimate, c.full_replay)} | "
            f"{c.full_plan:,.0f} ({c.full_plan_cpu:.1f}) | {_pct(c.full_replay, c.full_plan)} |")
    if varied:
        reference = next(c for c in cases if c.name == VARIED)
        lines += [
            "", f"## The scale model's size ({VARIED})", "",
            f"Planned on every request: {reference.full_plan:,.0f} s estimated, {reference.full_plan_cpu:.1f} CPU s.",
            "",
            "| scale model | plan CPU s | estimate s | full replay of its plan s | estimate error | plan vs full planning |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for scale, cpu, estimate, replay, _ in varied:
            lines.append(f"| 1/{scale} | {cpu:.2f} | {estimate:,.0f} | {replay:,.0f} | {_pct(estimate, replay)} | "
                         f"{_pct(replay, reference.full_plan)} |")
    lines += ["", ("A plan made on a scale model is a sequence of stages; replayed on every request, a stage still ends "
              "when its first node finishes, so where the full app's nodes finish in another order than the scale "
              "model's the plan departs from what was planned (`evaluate_plan` completes what is left greedily; the "
              "runtime re-plans). The full replay of the plan measures that too."), "",
              *common.reproduce(command)]
    return "\n".join(lines)


def main() -> None:
    """Run the cases and write the page."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--no-varied", action="store_true", help="skip the scale-model sizes of the paper's mixed app")
    parser.add_argument("--no-write", action="store_true", help="print the page only")
    args = parser.parse_args()
    cluster = Cluster.parse(CLUSTER)
    started = time.perf_counter()
    apps = {name: build().scaled(args.inputs) for name, build in CASES.items()}
    timed_cases = {name: time_case(name, app, cluster) for name, app in apps.items()}  # first: nothing else ran yet
    cases, varied = [], []
    for name, (case, plan) in timed_cases.items():
        check_case(case, apps[name], plan, cluster)
        cases.append(case)
        if name == VARIED and not args.no_varied:
            varied = varied_scales(apps[name], cluster, case.full_plan)
    command = "/work/main/.venv/bin/python benchmarks/planner_scale.py" + (
        f" --inputs {args.inputs}" if args.inputs != 10_000 else "")
    common.publish(report(cases, varied, args.inputs, command, time.perf_counter() - started), REPORT,
                   write=not args.no_write)


if __name__ == "__main__":
    main()
