"""The run report's charts: the initial plan above the actual run on one time axis, and each model's output
tokens per second over the run.

Both use the planner's Gantt drawing conventions (``planner/gantt.py``): matplotlib's Agg canvas directly (no
global backend, no display), one colour per model shared by both charts, time in the backend's seconds. The
initial plan is drawn from when it was made (its first planning decision), so its stages sit where the run
could have followed them. Each chart is also available as image bytes, for the self-contained HTML page.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from samullm_lc.planner.gantt import (
    DEFAULT_CHART_FORMAT,
    chart_format,
    figure_bytes,
    gantt_image,
    model_colours,
    panel_title,
)
from samullm_lc.planner.plan import Plan
from samullm_lc.user_files import write_private

if TYPE_CHECKING:
    from samullm_lc.runtime.report import RunReport

THROUGHPUT_POINTS = 40
"""The throughput chart shows at most about this many bins per model: finer bins are added up, so that the line
follows the rate rather than each batch of finishes."""


def planned_from_start(report: RunReport) -> Plan | None:
    """The initial plan on the run's clock: its stages moved to when it was made (None without a plan)."""
    plan = report.initial_plan
    if plan is None:
        return None
    offset = report.replans[0].at_seconds if report.replans else 0.0
    stages = [stage.model_copy(update={"start_seconds": stage.start_seconds + offset,
                                       "end_seconds": stage.end_seconds + offset}) for stage in plan.stages]
    return plan.model_copy(update={"stages": stages, "estimated_seconds": plan.estimated_seconds + offset})


def _panels(report: RunReport) -> tuple[list[Plan], list[str]]:
    """The plans to draw, top to bottom, with their titles: the initial plan (if any), then the actual run."""
    plans, titles = [], []
    planned = planned_from_start(report)
    if planned is not None:
        plans.append(planned)
        titles.append(f"initial plan, {panel_title(planned)}")
    plans.append(report.actual_plan())
    titles.append(report.actual_title())
    return plans, titles


def chart_models(report: RunReport) -> list[str]:
    """The report's models in the Gantt chart's order (first appearance in the plan, then in the run, then the
    rest), so that each model gets the same colour (``gantt.model_colours``) on every chart."""
    plans, _ = _panels(report)
    drawn = [entry.plan.model for plan in plans for stage in plan.stages for entry in stage.entries]
    return list(dict.fromkeys(drawn + [record.model for record in report.models]))


def plan_vs_actual_image(report: RunReport, image_format: str = DEFAULT_CHART_FORMAT) -> bytes:
    """The plan-vs-actual Gantt chart as image bytes."""
    plans, titles = _panels(report)
    return gantt_image(plans, titles, image_format)


def draw_plan_vs_actual(report: RunReport, path: str | Path) -> Path:
    """Draw the initial plan as estimated above the actual run, on one time axis, into ``path`` (mode 0600)."""
    path = Path(path)
    return write_private(path, plan_vs_actual_image(report, chart_format(path)))


def _time_axis_seconds(report: RunReport) -> float:
    """The end of the time axis: the latest of the run's end, its estimate and its engines' stops."""
    ends = [report.seconds, report.estimated_seconds or 0.0] + [span.stopped_seconds for span in report.engines]
    return max(ends) or 1.0


def throughput_image(report: RunReport, image_format: str = DEFAULT_CHART_FORMAT) -> bytes:
    """Each model's output tokens per second over the run (and all models together) as image bytes."""
    models = chart_models(report)
    colours = model_colours(models)
    records = {record.model: record for record in report.models}
    makespan = _time_axis_seconds(report)
    widest = max([records[m].output_tokens_over_time.bin_seconds for m in records] + [makespan / THROUGHPUT_POINTS])
    series = {m: records[m].output_tokens_over_time.coarsened(widest) for m in models
              if m in records and records[m].output_tokens_over_time.output_tokens}

    figure = Figure(figsize=(13, 3.4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for model, timeline in series.items():
        rates = [rate for _, rate in timeline.tokens_per_second()]
        axes.stairs(rates, [i * timeline.bin_seconds for i in range(len(rates) + 1)], color=colours[model],
                    linewidth=1.4, label=model)
    widths = {round(timeline.bin_seconds, 9) for timeline in series.values()}
    if len(series) > 1 and len(widths) == 1:  # on one bin width (always, for the recorder's series): add them up
        width = widths.pop()
        bins = max(len(timeline.output_tokens) for timeline in series.values())
        totals = [sum(t.output_tokens[i] for t in series.values() if i < len(t.output_tokens)) / width
                  for i in range(bins)]
        axes.stairs(totals, [i * width for i in range(bins + 1)], color="0.15", linestyle="--", linewidth=1.0,
                    label="all models")
    if series:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        empty = ("this report holds no tokens over time (written by an older samullm_lc, or every request came from "
                 "the journal)" if report.requests_done else "no request finished")
        axes.text(0.5, 0.5, empty, transform=axes.transAxes, ha="center", va="center", color="0.4")
    axes.set_xlim(0, makespan * 1.01)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("output tokens/s")
    shown = next(iter(series.values())).bin_seconds if series else widest
    axes.set_title(f"output tokens per second, per model (bins of {shown:.3g} s)", fontsize=10)
    figure.tight_layout()
    return figure_bytes(figure, image_format)


def draw_throughput(report: RunReport, path: str | Path) -> Path:
    """Draw each model's output tokens per second over the run into ``path`` (mode 0600)."""
    path = Path(path)
    return write_private(path, throughput_image(report, chart_format(path)))


__all__ = ["chart_models", "draw_plan_vs_actual", "draw_throughput", "plan_vs_actual_image", "planned_from_start",
           "throughput_image"]
