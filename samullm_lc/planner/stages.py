"""The stage model the search runs on: a fast, approximate account of what one stage does.

State: per node the tokens still to process, and which engines are up (model -> placement). A stage
runs a group of engines from ``time`` until its first node finishes:

- an engine that keeps its placement keeps running (no load, in-flight requests kept); a new or changed
  engine pays its load time first and a whole tail, and the nodes of a changed or dropped engine lose
  their in-flight work (the requests restart from scratch);
- the nodes in the stage are the unfinished nodes of the group's models whose upstream nodes are
  finished or in the stage themselves; their requests arrive as upstream requests finish;
- each engine works through its nodes first come, first served: nodes whose requests are all there
  first, then nodes fed by other nodes, in topological order; a node's requests take
  ``curve.remaining_seconds`` (``curves.py``), and a fed node cannot end before its last upstream
  request plus one tail, nor get ahead of its upstream nodes' progress.

A chain of vertically fused nodes counts as one node for the stage end (``stage_enders``). Stage
throughput is useful FLOPs (model FLOPs per token x tokens processed, minus work lost to restarts)
per second of the stage, loads included: the ranking of the SamuLLM paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from samullm_lc.planner.context import PlanningContext
from samullm_lc.planner.curves import EngineCurve
from samullm_lc.planner.placement import Assignment

Group = tuple[Assignment, ...]
_EPS = 1e-9
_PROGRESS_STEPS = 1000  # states are memoised on progress rounded to this many steps per node
_STAGE_CACHE_SIZE = 100_000


@dataclass(slots=True)
class StageState:
    """Where the run stands at a stage boundary."""

    time: float
    remaining: np.ndarray  # tokens per node still to process (0: finished)
    engines: dict[str, Assignment]
    in_flight: np.ndarray  # tokens per node already processed by its unfinished requests on a running engine
    ready: dict[str, float] = field(default_factory=dict)  # per running engine, when its load is over (seconds)

    def unfinished(self) -> np.ndarray:
        """Per node, whether tokens are left."""
        return self.remaining > 0.0

    def done(self) -> bool:
        """Whether every node is finished."""
        return not bool(np.any(self.remaining > 0.0))

    def key(self, total: np.ndarray) -> tuple:
        """Memo key: progress rounded per node, and the running engines."""
        progress = np.rint(_PROGRESS_STEPS * self.remaining / np.maximum(total, 1.0)).astype(np.int64)
        return tuple(progress.tolist()), tuple(sorted(self.engines.values()))


@dataclass(slots=True)
class StageOutcome:
    """One stage of the stage model: what ran, for how long, and the state after it."""

    group: Group
    loads: dict[str, float]
    start: float
    end: float
    throughput: float  # useful FLOPs per second
    finished: list[int]
    state: StageState


def initial_state(ctx: PlanningContext) -> StageState:
    """Nothing running, every request still to do."""
    n = ctx.num_nodes
    return StageState(time=0.0, remaining=ctx.total_tokens.copy(), engines={}, in_flight=np.zeros(n))


def stage_nodes(ctx: PlanningContext, unfinished: np.ndarray, models: set[str]) -> list[int]:
    """Unfinished nodes of ``models`` whose upstream nodes are finished or in the stage, in topological order.

    A node is left out if taking it would make two engines feed each other (the replay needs the
    engines of a stage to form a DAG).
    """
    key = (unfinished.tobytes(), frozenset(models))
    nodes = ctx.stage_cache.get(key)
    if nodes is None:
        if len(ctx.stage_cache) > _STAGE_CACHE_SIZE:
            ctx.stage_cache.clear()
        nodes = ctx.stage_cache[key] = tuple(_stage_nodes(ctx, unfinished, models))
    return list(nodes)


def _stage_nodes(ctx: PlanningContext, unfinished: np.ndarray, models: set[str]) -> list[int]:
    inside: list[int] = []
    member = np.zeros(ctx.num_nodes, dtype=bool)
    feeds: dict[str, set[str]] = {}
    for n in range(ctx.num_nodes):
        model = ctx.node_model[n]
        if not unfinished[n] or model not in models:
            continue
        ups = ctx.upstream[n]
        if any(unfinished[u] and not member[u] for u in ups):
            continue
        sources = {ctx.node_model[u] for u in ups if member[u] and ctx.node_model[u] != model}
        if any(reaches(feeds, model, source) for source in sources):
            continue
        for source in sources:
            feeds.setdefault(source, set()).add(model)
        member[n] = True
        inside.append(n)
    return inside


def stage_enders(ctx: PlanningContext, nodes: list[int]) -> list[int]:
    """The nodes whose finish ends a stage: all but those feeding a node of the same model in the stage.

    Vertically fused nodes count as one, as in SamuLLM: a chain of nodes on one engine ends a stage when
    its last node finishes, since the engine runs the chain's levels concurrently anyway.
    """
    member = set(nodes)
    fused = {u for n in nodes for u in ctx.upstream[n] if u in member and ctx.node_model[u] == ctx.node_model[n]}
    return [n for n in nodes if n not in fused]


def reaches(feeds: dict[str, set[str]], start: str, goal: str) -> bool:
    """Whether ``goal`` is reachable from ``start`` along the engine feed edges."""
    seen, todo = {start}, [start]
    while todo:
        current = todo.pop()
        if current == goal:
            return True
        for nxt in feeds.get(current, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def run_stage(ctx: PlanningContext, state: StageState, group: Group) -> StageOutcome | None:
    """The stage model's outcome of running ``group`` from ``state``; None if no node of it can run."""
    chosen = {a.model: a for a in group}
    nodes = stage_nodes(ctx, state.remaining > 0.0, set(chosen))
    if not nodes:
        return None
    kept = {m for m, a in chosen.items() if state.engines.get(m) == a}
    remaining, in_flight = _charge_restarts(ctx, state, kept)
    start_remaining = remaining.copy()
    member = np.zeros(ctx.num_nodes, dtype=bool)
    member[nodes] = True
    curves = {m: ctx.curves[m].curve(a.option) for m, a in chosen.items()}
    first_stage = state.time == 0.0 and not state.engines
    loads = {m: 0.0 if m in kept else curves[m].load_seconds + ctx.process_start_seconds(m, first_stage=first_stage)
             for m in chosen}
    free = {m: max(state.ready.get(m, state.time), state.time) if m in kept else state.time + loads[m] for m in chosen}
    begin = np.zeros(ctx.num_nodes)
    finish = np.full(ctx.num_nodes, np.inf)
    fresh = {n: ctx.node_model[n] not in kept or in_flight[n] <= 0.0 for n in nodes}
    for n in _service_order(ctx, nodes, member):
        model = ctx.node_model[n]
        curve = curves[model]
        begin[n] = free[model]
        end = begin[n] + curve.remaining_seconds(remaining[n], fresh=fresh[n])
        for u in ctx.upstream[n]:
            if member[u]:
                end = max(end, finish[u] + curve.tail)
        finish[n] = end
        free[model] = begin[n] + remaining[n] / curve.rate
    end_time = float(finish[stage_enders(ctx, nodes)].min())
    finished = [n for n in nodes if finish[n] <= end_time + _EPS]
    for n in nodes:
        if finish[n] <= end_time + _EPS:
            remaining[n] = 0.0
        else:
            remaining[n] = _left_at(ctx, n, curves, begin, remaining, member, end_time, fresh[n])
        done = start_remaining[n] - remaining[n]
        in_flight[n] = min(in_flight[n] + done, curves[ctx.node_model[n]].in_flight_tokens()) if remaining[n] else 0.0
    useful = float(np.dot(ctx.flops_per_token, state.remaining - remaining))
    ready = {m: state.ready.get(m, state.time) if m in kept else state.time + loads[m] for m in chosen}
    after = StageState(time=end_time, remaining=remaining, engines=dict(chosen), in_flight=in_flight, ready=ready)
    return StageOutcome(group=group, loads=loads, start=state.time, end=end_time,
                        throughput=useful / max(end_time - state.time, _EPS), finished=finished, state=after)


def _charge_restarts(ctx: PlanningContext, state: StageState, kept: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Remaining tokens and in-flight tokens once engines not kept have lost their in-flight work."""
    remaining = state.remaining.copy()
    in_flight = state.in_flight.copy()
    for n in range(ctx.num_nodes):
        if in_flight[n] > 0.0 and ctx.node_model[n] not in kept:
            remaining[n] = min(ctx.total_tokens[n], remaining[n] + in_flight[n])
            in_flight[n] = 0.0
    return remaining, in_flight


def _service_order(ctx: PlanningContext, nodes: list[int], member: np.ndarray) -> list[int]:
    """Nodes with all their requests present first, then the nodes fed inside the stage (topological order)."""
    fed = [n for n in nodes if any(member[u] for u in ctx.upstream[n])]
    ready = [n for n in nodes if not any(member[u] for u in ctx.upstream[n])]
    return ready + fed


def _left_at(ctx: PlanningContext, n: int, curves: dict[str, EngineCurve], begin: np.ndarray,
             remaining: np.ndarray, member: np.ndarray, at: float, fresh: bool) -> float:
    """Tokens node ``n`` still has at time ``at``: its own progress, capped by its upstream nodes' progress."""
    curve = curves[ctx.node_model[n]]
    left = curve.tokens_left(remaining[n], at - begin[n], fresh=fresh) if at > begin[n] else remaining[n]
    total = ctx.total_tokens[n]
    for u in ctx.upstream[n]:
        if member[u]:
            share_left = remaining[u] / max(ctx.total_tokens[u], 1.0)
            left = max(left, total * share_left)
    return min(float(left), float(remaining[n]))
