"""How accurate the planner's curves are against the full simulation, by how many batches each run keeps.

The search ranks stages on one curve per (model, plan), fitted on a shortened scale-model simulation
(``planner/curves.py``: every k-th request on a 1/k engine, a long share cut to ``batches`` batches). This
script compares each curve's standalone time with the full simulation of the same engine on every request
of the model (no scale model, no cut), for every single-replica plan (each TP degree, and half a GPU where
offered) of every model of the ensemble and router apps at N = 1,000 and 5,000 and the chain-summary app at
N = 1,000 (the mixed app is these three together), 8 x A100-80GB, NVSwitch, seed 0. Data-parallel plans are
left out: their curves are the single replica's with r times the rate (``ModelCurves._replicated``) or
fitted the same way.

Reports, per cut: mean, median, 90th percentile and worst |error|, the signed mean (negative: curves too
fast), and the CPU seconds of the fits (``time.process_time``; the full simulations are not counted).
Writes ``docs/results/planner-curve-accuracy.md``.

Run: ``/work/main/.venv/bin/python benchmarks/planner_curve_accuracy.py [--batches 6 12 24]``
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import common
import numpy as np

from samullm_lc.costmodel.simulator import simulate
from samullm_lc.graph.paper_apps import PAPER_APPS
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.context import PlanningSettings, build_app_options, build_context
from samullm_lc.planner.curves import BATCHES_SIMULATED, fit_curve
from samullm_lc.planner.options import EngineOption

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "results" / "planner-curve-accuracy.md"
CLUSTER = "8xA100-80GB"
TOPOLOGY = "nvswitch"
CASES = (("ensemble", 1000), ("ensemble", 5000), ("router", 1000), ("router", 5000), ("chain-summary", 1000))
BATCHES = (BATCHES_SIMULATED, 12, 24)
WORST_LISTED = 8


@dataclass
class Engine:
    """One model on one single-replica plan: the full simulation's seconds and each cut's curve seconds."""

    app: str
    n: int
    model: str
    option: EngineOption
    full_seconds: float
    preemptions: int
    curve_seconds: dict[int, float] = field(default_factory=dict)

    def error(self, batches: int) -> float:
        """Curve seconds / full seconds - 1 (negative: the curve is too fast)."""
        return self.curve_seconds[batches] / self.full_seconds - 1.0


def measure(batch_counts: list[int], seed: int) -> tuple[list[Engine], dict[int, float]]:
    """Every engine of every case, simulated in full and fitted at each cut; fit CPU seconds per cut."""
    cluster = Cluster.parse(CLUSTER, TOPOLOGY)
    engines: list[Engine] = []
    fit_seconds = dict.fromkeys(batch_counts, 0.0)
    for app_name, n in CASES:
        app = PAPER_APPS[app_name](n, seed)
        model_options = build_app_options(app, cluster)
        ctx = build_context(app, cluster, model_options, PlanningSettings(), seed=seed)
        for model in ctx.models:
            curves = ctx.curves[model]
            for option in curves.options:
                if option.replicas > 1:
                    continue
                cost = model_options[model]
                full = simulate(cost.scheduler(option), cost.latency(option), curves.prompt, curves.output)
                engine = Engine(app=app_name, n=n, model=model, option=option, full_seconds=full.total_seconds,
                                preemptions=full.num_preemptions)
                for batches in batch_counts:
                    start = time.process_time()
                    curve = fit_curve(option, cost, curves.prompt, curves.output, batches=batches)
                    fit_seconds[batches] += time.process_time() - start
                    engine.curve_seconds[batches] = curve.standalone_seconds
                engines.append(engine)
            print(f"{app_name} N={n} {model}: " + ", ".join(
                f"{e.option.label()} {e.full_seconds:.0f} s" for e in engines if e.model == model and e.n == n
                and e.app == app_name), flush=True)
    return engines, fit_seconds


def _label(engine: Engine) -> str:
    return f"{engine.app} N={engine.n:,} {engine.model} {engine.option.label()}"


def summary_table(engines: list[Engine], fit_seconds: dict[int, float]) -> list[str]:
    """Markdown: error statistics and fit CPU per cut."""
    lines = ["| batches kept | mean abs error | median | p90 | worst | signed mean | fit CPU s |",
             "|---:|---:|---:|---:|---|---:|---:|"]
    for batches, seconds in fit_seconds.items():
        errors = np.array([e.error(batches) for e in engines])
        worst = max(engines, key=lambda e: abs(e.error(batches)))
        default = " (default)" if batches == BATCHES_SIMULATED else ""
        lines.append(
            f"| {batches}{default} | {np.abs(errors).mean():.1%} | {np.median(np.abs(errors)):.1%} | "
            f"{np.quantile(np.abs(errors), 0.9):.1%} | {worst.error(batches):+.1%} ({_label(worst)}) | "
            f"{errors.mean():+.1%} | {seconds:.2f} |"
        )
    return lines


def worst_table(engines: list[Engine], batch_counts: list[int]) -> list[str]:
    """Markdown: the engines the default cut gets most wrong, with every cut's error."""
    ranked = sorted(engines, key=lambda e: -abs(e.error(BATCHES_SIMULATED)))[:WORST_LISTED]
    lines = ["| engine | full simulation s | preemptions | " + " | ".join(f"{b} batches" for b in batch_counts) + " |",
             "|---|---:|---:|" + "---:|" * len(batch_counts)]
    for engine in ranked:
        lines.append(f"| {_label(engine)} | {engine.full_seconds:,.0f} | {engine.preemptions:,} | "
                     + " | ".join(f"{engine.error(b):+.1%}" for b in batch_counts) + " |")
    return lines


def report(engines: list[Engine], fit_seconds: dict[int, float], wall_seconds: float, command: str) -> str:
    """The markdown report."""
    batch_counts = list(fit_seconds)
    pressured = [e for e in engines if e.preemptions > 0]
    lines = [
        "# Planner curve accuracy",
        "",
        f"Generated by `benchmarks/planner_curve_accuracy.py` on {common.machine()}; {len(engines)} engines in "
        f"{wall_seconds:.0f} s. Each curve's standalone time against the full simulation of the same engine on "
        "every request of its model (no scale model, no cut): every single-replica plan of every model of "
        + ", ".join(f"{app} at N={n:,}" for app, n in CASES)
        + f", {CLUSTER}, {TOPOLOGY}, seed 0. An error below zero is a curve that is too fast.",
        "",
        "## Summary",
        "",
        *summary_table(engines, fit_seconds),
        "",
        f"{len(pressured)} of the {len(engines)} engines preempt requests in the full simulation (their KV cache "
        "runs out); the curves of those are the ones a short cut gets wrong, since a few batches end before "
        "the preemptions reach their steady state. Mean |error| over them only: "
        + ", ".join(f"{np.mean([abs(e.error(b)) for e in pressured]):.1%} at {b} batches" for b in batch_counts)
        + ".",
        "",
        "## The engines the default cut gets most wrong",
        "",
        *worst_table(engines, batch_counts),
        "",
        "## What it does to the plans",
        "",
        "Every planner, the `sequential` baseline included, picks its plans on these curves, and every "
        "reported time is the faithful replay of the plan. `benchmarks/planner_paper_apps.py --curve-batches "
        "24` reruns the planner benchmark on 24-batch curves: "
        "[planner-paper-apps-curves-24.md](planner-paper-apps-curves-24.md).",
        "",
        *common.reproduce(command),
    ]
    return "\n".join(lines)


def main() -> None:
    """Measure every engine and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    args = parser.parse_args()
    start = time.perf_counter()
    engines, fit_seconds = measure(args.batches, args.seed)
    command = "/work/main/.venv/bin/python benchmarks/planner_curve_accuracy.py"
    if tuple(args.batches) != BATCHES:
        command += " --batches " + " ".join(map(str, args.batches))
    common.publish(report(engines, fit_seconds, time.perf_counter() - start, command), REPORT,
                   write=not args.no_write)


if __name__ == "__main__":
    main()
