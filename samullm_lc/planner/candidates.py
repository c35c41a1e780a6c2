"""Candidate stages: which models run together next, each with which option and GPUs.

Two generators share the SamuLLM rules (every model of a group has a node that can run in the stage; a
group may not leave GPUs idle while a model that could run waits):

- ``all_groups`` enumerates every combination of the models that could run, each with the fastest
  option per GPU count or its current engine. The exhaustive planner uses it; it grows exponentially.
- ``heuristic_groups`` builds a few dozen groups for the search and greedy planners: the running models
  plus the k most urgent waiting ones (longest remaining critical path) for every k, each starting on its
  most efficient or its smallest option (running ones possibly on their current engine), spare GPUs
  handed out so that finish times even out; and the running engines kept, free GPUs filled likewise.
"""

from __future__ import annotations

import numpy as np

from samullm_lc.planner.context import PlanningContext
from samullm_lc.planner.curves import EngineCurve
from samullm_lc.planner.options import EngineOption
from samullm_lc.planner.placement import place
from samullm_lc.planner.stages import Group, StageState, stage_nodes


def runnable_models(ctx: PlanningContext, state: StageState) -> list[str]:
    """Models with a node that could run in the next stage if every model were in it."""
    nodes = stage_nodes(ctx, state.unfinished(), set(ctx.models))
    return list(dict.fromkeys(ctx.node_model[n] for n in nodes))


def model_options(ctx: PlanningContext, state: StageState, model: str) -> list[EngineOption]:
    """The fastest option per GPU count, plus the running engine's option."""
    options = [c.option for c in ctx.curves[model].best_up_to(ctx.cluster.usable_gpus)]
    running = state.engines.get(model)
    if running is not None and running.option not in options:
        options.append(running.option)
    return options


def urgency(ctx: PlanningContext, state: StageState) -> dict[str, float]:
    """Per model: seconds of the longest remaining chain through its nodes (each on its most efficient option),
    plus its load time if it is not running."""
    efficient = {m: ctx.curves[m].efficient(ctx.cluster.usable_gpus) for m in ctx.models}
    node_time = np.zeros(ctx.num_nodes)
    for n in reversed(range(ctx.num_nodes)):
        if state.remaining[n] <= 0.0:
            continue
        own = efficient[ctx.node_model[n]].remaining_seconds(state.remaining[n])
        below = max((node_time[d] for d in ctx.workload.downstream[n]), default=0.0)
        node_time[n] = own + below
    return {m: float(max(node_time[n] for n in ctx.model_nodes(m)))
            + (0.0 if m in state.engines else efficient[m].load_seconds) for m in ctx.models}


def valid_group(ctx: PlanningContext, state: StageState, group: Group, runnable: list[str]) -> bool:
    """Every model of the group has a node in the stage, and no runnable model waits while a GPU it fits is idle."""
    models = {a.model for a in group}
    nodes = stage_nodes(ctx, state.unfinished(), models)
    if {ctx.node_model[n] for n in nodes} != models:
        return False
    used = sum(a.option.num_gpus for a in group)
    free = ctx.cluster.usable_gpus - used
    if free < 0.5:
        return True
    for model in runnable:
        if model in models:
            continue
        smallest = min(o.num_gpus for o in ctx.options(model))
        if smallest <= free and _joins(ctx, state, models, model):
            return False
    return True


def _joins(ctx: PlanningContext, state: StageState, models: set[str], model: str) -> bool:
    """Whether ``model`` would have a node in the stage next to ``models``."""
    nodes = stage_nodes(ctx, state.unfinished(), models | {model})
    return any(ctx.node_model[n] == model for n in nodes)


def all_groups(ctx: PlanningContext, state: StageState) -> list[Group]:
    """Every valid group: each runnable model left out or given one of its options."""
    runnable = runnable_models(ctx, state)
    choices = [(m, model_options(ctx, state, m)) for m in runnable]
    capacity = float(ctx.cluster.usable_gpus)
    groups: dict[Group, None] = {}

    def extend(index: int, picked: list[tuple[str, EngineOption]], used: float) -> None:
        if index == len(choices):
            if picked:
                group = place(picked, ctx.cluster, state.engines)
                if group is not None and valid_group(ctx, state, group, runnable):
                    groups[group] = None
            return
        extend(index + 1, picked, used)
        model, options = choices[index]
        for option in options:
            if used + option.num_gpus <= capacity:
                extend(index + 1, [*picked, (model, option)], used + option.num_gpus)

    extend(0, [], 0.0)
    return list(groups)


def heuristic_groups(ctx: PlanningContext, state: StageState) -> list[Group]:
    """A few dozen good groups: the running models plus the k most urgent waiting ones, for every k.

    A running model with requests it can serve on its own is never dropped (it would lose its in-flight
    requests and pay a load again later); it keeps its engine, or is re-planned with the newcomers. A
    running model that only waits for requests from other models may be dropped.
    """
    runnable = runnable_models(ctx, state)
    if not runnable:
        return []
    priority = urgency(ctx, state)
    unfinished = state.unfinished()
    running = [m for m in runnable if m in state.engines and stage_nodes(ctx, unfinished, {m})]
    waiting = sorted((m for m in runnable if m not in running), key=lambda m: (-priority[m], runnable.index(m)))
    waiting = _joinable_order(ctx, state, running, waiting)
    wanted: list[list[tuple[str, EngineOption]]] = []
    for k in range(0 if running else 1, len(waiting) + 1):
        for keep in (True, False):
            for thrifty in (True, False):
                picked = _balanced(ctx, state, running + waiting[:k], keep=keep, thrifty=thrifty)
                if picked is not None:
                    wanted.append(picked)
    if running:
        picked = _fill(ctx, state, [(m, state.engines[m].option) for m in running], waiting)
        if picked is not None:
            wanted.append(picked)
    groups: dict[Group, None] = {}
    for picked in wanted:
        group = place(picked, ctx.cluster, state.engines)
        if group is not None and valid_group(ctx, state, group, runnable):
            groups[group] = None
    return list(groups) or all_groups(ctx, state)


def _joinable_order(ctx: PlanningContext, state: StageState, running: list[str], waiting: list[str]) -> list[str]:
    """``waiting`` reordered so that each model has a node that can run next to the ones before it."""
    chosen, order, left = set(running), [], list(waiting)
    while left:
        model = next((m for m in left if _joins(ctx, state, chosen, m)), None)
        if model is None:
            break
        order.append(model)
        chosen.add(model)
        left.remove(model)
    return order


def _balanced(ctx: PlanningContext, state: StageState, models: list[str], *, keep: bool, thrifty: bool
              ) -> list[tuple[str, EngineOption]] | None:
    """Start ``models`` on their most efficient options (``thrifty``) or smallest ones, running engines as
    they are if ``keep``; then hand spare GPUs to the latest finisher."""
    level: dict[str, EngineCurve] = {}
    for model in models:
        running = state.engines.get(model)
        if keep and running is not None:
            level[model] = ctx.curves[model].curve(running.option)
        elif thrifty:
            level[model] = ctx.curves[model].efficient(ctx.cluster.usable_gpus)
        else:
            level[model] = ctx.curves[model].smallest()
    if sum(c.option.num_gpus for c in level.values()) > ctx.cluster.usable_gpus:
        return None
    _spread(ctx, state, level, fixed={m for m in models if keep and m in state.engines})
    return [(m, c.option) for m, c in level.items()]


def _fill(ctx: PlanningContext, state: StageState, kept: list[tuple[str, EngineOption]], waiting: list[str]
          ) -> list[tuple[str, EngineOption]] | None:
    """Running engines unchanged, waiting models added by urgency on their most efficient option that fits,
    spare GPUs spread over the newcomers."""
    used = sum(o.num_gpus for _, o in kept)
    level: dict[str, EngineCurve] = {}
    for model in waiting:
        start = ctx.curves[model].efficient(ctx.cluster.usable_gpus - used)
        if used + start.option.num_gpus <= ctx.cluster.usable_gpus:
            level[model] = start
            used += start.option.num_gpus
    _spread(ctx, state, level, fixed=set(), budget=ctx.cluster.usable_gpus - sum(o.num_gpus for _, o in kept))
    return [*kept, *((m, c.option) for m, c in level.items())] if level or kept else None


def _spread(ctx: PlanningContext, state: StageState, level: dict[str, EngineCurve], fixed: set[str],
            budget: float | None = None) -> None:
    """Give spare GPUs, one step up an option ladder at a time, to the model expected to finish last."""
    budget = float(ctx.cluster.usable_gpus) if budget is None else budget
    work = {m: float(sum(state.remaining[n] for n in ctx.model_nodes(m))) for m in level}

    def finish(model: str, curve: EngineCurve) -> float:
        running = state.engines.get(model)
        load = 0.0 if running is not None and running.option == curve.option else curve.load_seconds
        return load + curve.remaining_seconds(work[model])

    while True:
        spare = budget - sum(c.option.num_gpus for c in level.values())
        steps = []
        for model, curve in level.items():
            if model in fixed:
                continue
            bigger = ctx.curves[model].next_faster(curve, spare)
            if bigger is not None and finish(model, bigger) < finish(model, curve):
                steps.append((finish(model, curve), model, bigger))
        if not steps:
            return
        _, model, curve = max(steps)
        level[model] = curve
