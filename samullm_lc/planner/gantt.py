"""Draw a plan as a Gantt chart: devices on the y axis, time on the x axis, one colour per model.

A person checks a plan faster by eye than by reading ``Plan.describe()``: idle devices, long loads and models
that share a stage show at once. Each engine is a bar on each of its devices, from its start through the stages
it runs on unchanged (same plan and devices, no reload); the model-load part of the bar is hatched; engines
that share a device (time-sliced, or one loading beside another) split its row, and a time-sliced one's label
says so; the first device of each replica carries the model and its parallelism (cut at the bar's end); dashed
lines mark the stage boundaries. Rows are named after the cluster's hardware (``cluster.device_word``: "core 0"
on the CPU engine, "GPU 0" otherwise). ``draw_gantt_comparison`` stacks several plans on one time axis: a plan
next to a baseline's, or the run report's plan next to the run as it happened. The figure is built on
matplotlib's Agg canvas directly, so no global backend is touched and no display is needed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import TransformedBbox

from samullm_lc.errors import ConfigError
from samullm_lc.planner.cluster import Cluster, device_word
from samullm_lc.planner.plan import ExecutionPlan, Plan
from samullm_lc.user_files import write_private

DEFAULT_CHART_FORMAT = "png"  # of a chart file named without a suffix
ROW_HEIGHT = 0.8  # of one device row; engines sharing a device split it
LABEL_MIN_FRACTION = 0.06  # bars narrower than this share of the makespan carry no text
STAGE_LABEL_MIN_FRACTION = 0.025  # stages narrower than this share of the makespan carry no number


def _num_gpus(plan: Plan) -> int:
    """Device rows to draw: the cluster's count when its name starts with one, else the highest device used + 1."""
    used = max((gpu for stage in plan.stages for entry in stage.entries for gpu in entry.plan.gpus), default=-1) + 1
    try:
        counted = Cluster.from_text(plan.cluster).num_gpus
    except ConfigError:  # a name that is no cluster text
        counted = 0
    return max(used, counted, 1)


def model_colours(models: list[str]) -> dict[str, tuple[float, float, float, float]]:
    """One colour per model: tab20's ten strong colours first, then their light twins, then around again (the
    run report's throughput chart uses the same, so a model has one colour on every chart)."""
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {model: to_rgba(palette(order[index % len(order)])) for index, model in enumerate(models)}


def _ink(colour: tuple[float, float, float, float]) -> str:
    """Black text on light bars, white on dark ones."""
    red, green, blue, _ = colour
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def _short_name(model: str, limit: int = 18) -> str:
    return model if len(model) <= limit else model[: limit - 1] + "…"


@dataclass(slots=True)
class Bar:
    """One engine from its start until it stops or changes: stages it runs through unchanged are merged."""

    plan: ExecutionPlan
    lanes: tuple[tuple[int, int], ...]  # per GPU of the plan: (lane index, lanes on that GPU)
    start: float
    end: float
    load: float
    idle_until: float  # a preloaded engine serves nothing until then


def plan_bars(plan: Plan) -> list[Bar]:
    """The plan's engines as bars; an engine that keeps its devices and lane without a reload extends its bar, and
    its load is drawn over as many stages as it lasts."""
    bars: list[Bar] = []
    running: dict[tuple, Bar] = {}
    for stage in plan.stages:
        sharing: dict[int, list[str]] = {}
        for entry in sorted(stage.entries, key=lambda e: e.plan.model):
            for gpu in entry.plan.gpus:
                sharing.setdefault(gpu, []).append(entry.plan.model)
        still_running: dict[tuple, Bar] = {}
        for entry in stage.entries:
            lanes = tuple((sharing[gpu].index(entry.plan.model), len(sharing[gpu])) for gpu in entry.plan.gpus)
            key = (entry.plan, lanes)
            bar = running.get(key)
            if bar is not None and entry.load_seconds == 0 and abs(bar.end - stage.start_seconds) < 1e-9:
                bar.end = stage.end_seconds
            else:
                bar = Bar(entry.plan, lanes, stage.start_seconds, stage.end_seconds, entry.load_seconds,
                          stage.start_seconds)
                bars.append(bar)
            if not entry.nodes:
                bar.idle_until = stage.end_seconds
            still_running[key] = bar
        running = still_running
    for bar in bars:  # a load may outlast the stage it starts in (the stage ends when another model finishes)
        bar.load = min(bar.load, bar.end - bar.start)
    return bars


def plan_title(plan: Plan) -> str:
    """The title of a plan's chart: app, cluster, planner, estimated seconds and stages."""
    return (f"{plan.app} on {plan.cluster} [{plan.planner}]: {plan.estimated_seconds:.1f} s estimated, "
            f"{len(plan.stages)} stages")


def panel_title(plan: Plan) -> str:
    """The title of a plan's panel beside others of the same app: its planner, estimated seconds and stages."""
    return f"{plan.planner}: {plan.estimated_seconds:.1f} s estimated, {len(plan.stages)} stages"


def draw_gantt(plan: Plan, path: str | Path, *, title: str | None = None) -> Path:
    """Draw ``plan`` as a devices x time Gantt chart into the image file ``path`` (PNG, SVG, PDF: ``chart_formats``),
    mode 0600 like every file samullm_lc writes for a user; return the path. ``title`` replaces the estimated
    one (``plan_title``), e.g. for a run as it happened."""
    path = Path(path)
    image_format = chart_format(path)
    return write_private(path, gantt_image([plan], [title or plan_title(plan)], image_format))


def draw_gantt_comparison(plans: Sequence[Plan], path: str | Path, *, titles: Sequence[str] | None = None) -> Path:
    """Draw ``plans`` as Gantt panels stacked on one shared time axis into the image file ``path`` (a plan next to
    a baseline's, or the plan next to the run): one colour per model over every panel, each panel titled with
    its planner and estimated seconds (``panel_title``) unless ``titles`` gives one per plan; return the path."""
    path = Path(path)
    image_format = chart_format(path)
    if titles is not None and len(titles) != len(plans):
        raise ConfigError(f"{len(titles)} titles for {len(plans)} Gantt panels: give one title per plan")
    if not plans:
        raise ConfigError("a Gantt comparison needs at least one plan")
    return write_private(path, gantt_image(plans, titles or [panel_title(plan) for plan in plans], image_format))


def gantt_image(plans: Sequence[Plan], titles: Sequence[str], image_format: str = DEFAULT_CHART_FORMAT) -> bytes:
    """The Gantt chart of ``plans`` (one panel each, top to bottom, one shared time axis) as image bytes; above
    several panels of one app on one cluster, a heading names them."""
    models = list(dict.fromkeys(entry.plan.model for plan in plans for stage in plan.stages for entry in stage.entries))
    colours = model_colours(models)
    makespan = max(max([plan.estimated_seconds] + [stage.end_seconds for stage in plan.stages]) for plan in plans) or 1.0
    rows = [_num_gpus(plan) for plan in plans]
    heading = (f"{plans[0].app} on {plans[0].cluster}"
               if len(plans) > 1 and len({(plan.app, plan.cluster) for plan in plans}) == 1 else None)

    figure = Figure(figsize=(13, 0.6 * (heading is not None) + sum(1.3 + 0.5 * count for count in rows)), dpi=110)
    FigureCanvasAgg(figure)
    panels = figure.subplots(len(plans), 1, sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [1.3 + 0.5 * count for count in rows]})[:, 0]
    waiting = False
    for axes, plan, title, count in zip(panels, plans, titles, rows):
        waiting |= _draw_panel(axes, plan, count, colours, makespan)
        axes.set_title(title, fontsize=10)
    panels[-1].set_xlabel("time (s)")
    for axes in panels[:-1]:
        axes.tick_params(labelbottom=False)

    handles = [Patch(facecolor=colours[model], label=model) for model in models]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="model load"))
    if waiting:
        handles.append(Patch(facecolor="0.85", label="loaded, waiting for its stage"))
    panels[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if heading:
        figure.suptitle(heading, fontsize=11)
    figure.tight_layout()
    return figure_bytes(figure, image_format)


def figure_bytes(figure: Figure, image_format: str) -> bytes:
    """A drawn figure as image bytes of ``image_format`` (for a file or an HTML page)."""
    image = io.BytesIO()
    figure.savefig(image, format=image_format)
    return image.getvalue()


def _draw_panel(axes: Axes, plan: Plan, num_gpus: int, colours: dict[str, tuple[float, float, float, float]],
                makespan: float) -> bool:
    """One plan's bars, stage lines and device rows on ``axes``; whether an engine waits loaded for its stage."""
    waiting = False
    for bar in plan_bars(plan):
        colour = colours[bar.plan.model]
        duration = bar.end - bar.start
        replica_firsts = {devices[0] for devices in bar.plan.replica_devices()}
        for gpu, (lane, lanes) in zip(bar.plan.gpus, bar.lanes):
            height = ROW_HEIGHT / lanes
            bottom = gpu - ROW_HEIGHT / 2 + lane * height
            patch = axes.barh(bottom, duration, left=bar.start, height=height, align="edge",
                              color=colour, edgecolor="white", linewidth=0.6).patches[0]
            if bar.load > 0:
                axes.barh(bottom, bar.load, left=bar.start, height=height, align="edge",
                          color=(*colour[:3], 0.35), edgecolor="black", hatch="///", linewidth=0.4)
            if bar.idle_until > bar.start + bar.load:
                waiting = True
                axes.barh(bottom, bar.idle_until - bar.start - bar.load, left=bar.start + bar.load, height=height,
                          align="edge", color=(1.0, 1.0, 1.0, 0.6), edgecolor="white", linewidth=0.6)
            if gpu in replica_firsts and duration >= LABEL_MIN_FRACTION * makespan:
                parallel = f"TP{bar.plan.tp}" + (f"x{bar.plan.replicas}" if bar.plan.replicas > 1 else "")
                parallel += " sliced" if bar.plan.time_sliced else ""
                text = f"{parallel} {_short_name(bar.plan.model)}" if height >= ROW_HEIGHT / 2 else parallel
                label = axes.text(bar.start + bar.load + 0.01 * makespan, bottom + height / 2, text,
                                  va="center", ha="left", fontsize=7, clip_on=True, color=_ink(colour))
                label.set_clip_box(TransformedBbox(patch.get_bbox(), axes.transData))

    boundaries = sorted({s.start_seconds for s in plan.stages} | {s.end_seconds for s in plan.stages})
    for boundary in boundaries:
        axes.axvline(boundary, color="0.2", linestyle="--", linewidth=0.7, alpha=0.6, zorder=3)
    for index, stage in enumerate(plan.stages):
        if stage.end_seconds - stage.start_seconds >= STAGE_LABEL_MIN_FRACTION * makespan:
            axes.text((stage.start_seconds + stage.end_seconds) / 2, -0.6, f"S{index}",
                      ha="center", va="center", fontsize=8, color="0.3")

    axes.set_ylim(num_gpus - 0.5, -0.8)
    axes.set_xlim(0, makespan * 1.01)
    device = device_word(plan.cluster, plural=False)
    axes.set_yticks(range(num_gpus), [f"{device} {gpu}" for gpu in range(num_gpus)])
    return waiting


def chart_formats() -> list[str]:
    """The image formats (file suffixes without the dot) a chart can be written in: matplotlib's."""
    return sorted(FigureCanvasAgg(Figure()).get_supported_filetypes())


def chart_format(path: str | Path) -> str:
    """The image format of a chart file from its suffix (``png`` without one); ``ConfigError`` naming the
    formats if matplotlib cannot write it."""
    suffix = Path(path).suffix.lstrip(".").lower() or DEFAULT_CHART_FORMAT
    if suffix not in chart_formats():
        raise ConfigError(f"cannot draw a chart as {path}: matplotlib writes no .{suffix} files; use one of "
                          f"{', '.join('.' + name for name in chart_formats())} (.png is usual)")
    return suffix
