"""Draw a plan as a Gantt chart: GPUs on the y axis, time on the x axis, one colour per model.

A person checks a plan faster by eye than by reading ``Plan.describe()``: idle GPUs, long loads and models
that share a stage show at once. Each engine is a bar on each of its GPUs, from its start through the stages
it runs on unchanged (same plan and GPUs, no reload); the model-load part of the bar is hatched; engines
that share a GPU (time-sliced, or one loading beside another) split its row, and a time-sliced one's label
says so; the first GPU of each replica carries the model and its parallelism (cut at the bar's end); dashed
lines mark the stage boundaries. The figure is built on
matplotlib's Agg canvas directly, so no global backend is touched and no display is needed.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import TransformedBbox

from samullm_lc.errors import ConfigError
from samullm_lc.planner.plan import ExecutionPlan, Plan
from samullm_lc.user_files import write_private

DEFAULT_CHART_FORMAT = "png"  # of a chart file named without a suffix
ROW_HEIGHT = 0.8  # of one GPU row; engines sharing a GPU split it
LABEL_MIN_FRACTION = 0.06  # bars narrower than this share of the makespan carry no text
STAGE_LABEL_MIN_FRACTION = 0.025  # stages narrower than this share of the makespan carry no number


def _num_gpus(plan: Plan) -> int:
    """GPUs to draw: the cluster's count when its name starts with one, else the highest GPU used + 1."""
    used = max((gpu for stage in plan.stages for entry in stage.entries for gpu in entry.plan.gpus), default=-1) + 1
    match = re.match(r"\s*(\d+)\s*[xX×]", plan.cluster)
    return max(used, int(match.group(1)) if match else 0, 1)


def _colours(models: list[str]) -> dict[str, tuple[float, float, float, float]]:
    """One colour per model: tab20's ten strong colours first, then their light twins, then around again."""
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
    """The plan's engines as bars; an engine that keeps its GPUs and lane without a reload extends its bar."""
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
                load = min(entry.load_seconds, stage.end_seconds - stage.start_seconds)
                bar = Bar(entry.plan, lanes, stage.start_seconds, stage.end_seconds, load, stage.start_seconds)
                bars.append(bar)
            if not entry.nodes:
                bar.idle_until = stage.end_seconds
            still_running[key] = bar
        running = still_running
    return bars


def draw_gantt(plan: Plan, path: str | Path) -> Path:
    """Draw ``plan`` as a GPUs x time Gantt chart into the image file ``path`` (PNG, SVG, PDF: ``chart_formats``),
    mode 0600 like every file samullm_lc writes for a user; return the path."""
    path = Path(path)
    image_format = chart_format(path)
    num_gpus = _num_gpus(plan)
    models = list(dict.fromkeys(entry.plan.model for stage in plan.stages for entry in stage.entries))
    colours = _colours(models)
    makespan = max([plan.estimated_seconds] + [stage.end_seconds for stage in plan.stages]) or 1.0

    figure = Figure(figsize=(13, 1.6 + 0.5 * num_gpus), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()

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
    axes.set_yticks(range(num_gpus), [f"GPU {gpu}" for gpu in range(num_gpus)])
    axes.set_xlabel("time (s)")
    axes.set_title(f"{plan.app} on {plan.cluster} [{plan.planner}]: {plan.estimated_seconds:.1f} s estimated, "
                   f"{len(plan.stages)} stages", fontsize=10)
    handles = [Patch(facecolor=colours[model], label=model) for model in models]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="model load"))
    if any(bar.idle_until > bar.start + bar.load for bar in plan_bars(plan)):
        handles.append(Patch(facecolor="0.85", label="loaded, waiting for its stage"))
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    figure.tight_layout()

    image = io.BytesIO()
    figure.savefig(image, format=image_format)
    return write_private(path, image.getvalue())


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
