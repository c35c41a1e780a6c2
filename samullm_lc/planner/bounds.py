"""Lower bounds on the time still needed: they prune the search and tell how far a plan can be from optimal.

Two bounds, the larger wins:

- per model: its remaining work on its fastest option, plus a load unless that engine is already up
  (a model's nodes share one engine at a time, so its work adds up);
- area: every model's remaining work on the option that costs the fewest GPU-seconds (load included),
  summed and spread over all GPUs.

Both ignore that models wait for each other and for GPUs, so they never exceed what a plan can achieve
in the stage model. ``standalone_lower_bound`` uses the simulated standalone times instead of the curves.
"""

from __future__ import annotations

from samullm_lc.planner.context import PlanningContext
from samullm_lc.planner.curves import EngineCurve
from samullm_lc.planner.stages import StageState


def remaining_lower_bound(ctx: PlanningContext, state: StageState) -> float:
    """Seconds the stage model needs at least to finish from ``state``."""
    gpus = ctx.cluster.usable_gpus
    longest, area = 0.0, 0.0
    for model, work in zip(ctx.models, ctx.model_work(state.remaining).tolist(), strict=True):
        if work <= 0.0:
            continue
        running = state.engines.get(model)
        times, costs = [], []
        for curve in _curves(ctx, model, running.option if running else None):
            load = 0.0 if running is not None and running.option == curve.option else curve.load_seconds
            seconds = load + curve.remaining_seconds(work)
            times.append(seconds)
            costs.append(curve.option.num_gpus * seconds)
        longest = max(longest, min(times))
        area += min(costs)
    return max(longest, area / gpus)


def _curves(ctx: PlanningContext, model: str, running_option) -> list[EngineCurve]:
    curves = ctx.curves[model].known()
    if running_option is not None:
        curves.append(ctx.curves[model].curve(running_option))
    return curves


def standalone_lower_bound(ctx: PlanningContext) -> float:
    """max(longest model alone on its fastest option, total GPU-seconds / GPUs), loads included."""
    gpus = ctx.cluster.usable_gpus
    longest, area = 0.0, 0.0
    for model in ctx.models:
        curves = ctx.curves[model].best_up_to(gpus)
        longest = max(longest, min(c.load_seconds + c.standalone_seconds for c in curves))
        area += min(c.option.num_gpus * (c.load_seconds + c.standalone_seconds) for c in curves)
    return max(longest, area / gpus)
