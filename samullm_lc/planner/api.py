"""The planner's public entry points: plan an app, re-simulate a plan, bound the makespan, re-plan mid-run.

Every estimate here is the faithful replay of a plan (``replay.py``) on sampled output lengths; the
stage model and the curves only steer the search.
"""

from __future__ import annotations

import time

import numpy as np

from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.errors import ConfigError, DoesNotFitError
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.limits import CURVE_BATCHES, PLAN_SAMPLES
from samullm_lc.planner.bounds import standalone_lower_bound
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.context import PlanningContext, PlanningSettings, build_context, build_engines
from samullm_lc.planner.curves import BATCHES_SIMULATED
from samullm_lc.planner.options import ModelEngines, option_for
from samullm_lc.planner.placement import Assignment
from samullm_lc.planner.plan import ExecutionPlan, Plan, Stage, StageEntry
from samullm_lc.planner.planners import drive, get_planner
from samullm_lc.planner.preload import RUNNING_SHARES, longest_preloadable, preload
from samullm_lc.planner.replay import ExactRun
from samullm_lc.planner.search import GreedyPolicy
from samullm_lc.planner.state import RunState


def plan_app(
    app: AppGraph,
    cluster: Cluster,
    planner: str = "search",
    *,
    seed: int = 0,
    num_samples: int = 1,
    allow_gpu_sharing: bool = True,
    allow_replicas: bool = True,
    profiles: dict[str, EngineProfile] | None = None,
    curve_batches: int = BATCHES_SIMULATED,
) -> Plan:
    """Plan ``app`` on ``cluster``; ``estimated_seconds`` is the faithful replay on the sampled lengths.

    With ``num_samples`` > 1 the planner plans on each output-length sample, keeps the plan with the
    lowest mean over all samples, and reports that mean and the (min, max) spread. ``allow_gpu_sharing``
    also allows the search to load an engine beside the running ones for the next stage (``preload.py``);
    both put two engines on one GPU. ``curve_batches`` is
    how many batches each candidate simulation keeps: more make the search's curves more accurate under
    KV pressure and the planning slower.
    """
    started = time.perf_counter()
    settings = _settings(allow_gpu_sharing, allow_replicas, curve_batches)
    engines = build_engines(app, cluster, profiles=profiles)
    return _plan(app, cluster, planner, engines, settings, seed=seed, num_samples=num_samples, started=started)


def replan(
    app: AppGraph,
    cluster: Cluster,
    state: RunState,
    planner: str = "search",
    *,
    seed: int = 0,
    allow_gpu_sharing: bool = True,
    allow_replicas: bool = True,
    profiles: dict[str, EngineProfile] | None = None,
) -> Plan:
    """Plan what is left of a run from ``state``; the plan's time 0 is now, running engines start loaded.

    Engines the plan starts are charged their model load only: the runtime's pool starts them in the
    processes of engines it stopped, which have vLLM imported already.
    """
    started = time.perf_counter()
    state.check(app)
    settings = PlanningSettings(allow_sharing=allow_gpu_sharing, allow_replicas=allow_replicas, cold_start=False)
    engines = build_engines(app, cluster, profiles=profiles, output_lengths=state.output_lengths,
                            load_seconds=state.load_seconds)
    running = {m: _assignment(plan, cluster, engines[m]) for m, plan in state.engines.items() if plan is not None}
    finished = {node: np.asarray(requests, dtype=np.int64) for node, requests in state.finished.items()}
    return _plan(app, cluster, planner, engines, settings, seed=seed, num_samples=1, started=started,
                 finished=finished, known_outputs=state.output_tokens, running=running)


def evaluate_plan(
    app: AppGraph,
    cluster: Cluster,
    plan: Plan,
    *,
    seed: int = 0,
    profiles: dict[str, EngineProfile] | None = None,
) -> float:
    """Re-simulate ``plan`` faithfully on the output lengths of ``seed``; end-to-end seconds.

    Each stage runs its engines on its listed nodes until one of them finishes. If requests are left when
    the listed stages are over (other output lengths can finish nodes in another order), the rest is
    completed greedily.
    """
    engines = build_engines(app, cluster, profiles=profiles)
    ctx = build_context(app, cluster, engines, PlanningSettings(), seed=seed)
    return _replay(ctx, plan).end_seconds()


def lower_bound_seconds(
    app: AppGraph, cluster: Cluster, *, seed: int = 0, profiles: dict[str, EngineProfile] | None = None,
    curve_batches: int = BATCHES_SIMULATED,
) -> float:
    """max(longest model alone on its fastest plan, total GPU-seconds of work / GPUs), loads included (on the
    curves of ``curve_batches``-batch simulations, as ``plan_app``)."""
    engines = build_engines(app, cluster, profiles=profiles)
    ctx = build_context(app, cluster, engines, _settings(True, True, curve_batches), seed=seed)
    return standalone_lower_bound(ctx)


def _settings(allow_sharing: bool, allow_replicas: bool, curve_batches: int) -> PlanningSettings:
    CURVE_BATCHES.check(curve_batches)
    return PlanningSettings(allow_sharing=allow_sharing, allow_replicas=allow_replicas, curve_batches=curve_batches)


# ---- internals ---------------------------------------------------------------------------------------
def _plan(app: AppGraph, cluster: Cluster, planner: str, engines: dict[str, ModelEngines],
          settings: PlanningSettings, *, seed: int, num_samples: int, started: float,
          finished: dict[str, np.ndarray] | None = None, known_outputs: dict[str, dict[int, int]] | None = None,
          running: dict[str, Assignment] | None = None) -> Plan:
    PLAN_SAMPLES.check(num_samples)
    chosen = get_planner(planner)
    contexts = [
        build_context(app, cluster, engines, settings, seed=seed, sample_index=k, finished=finished,
                      known_outputs=known_outputs)
        for k in range(num_samples)
    ]
    plans = []
    for ctx in contexts:
        run = chosen.run(ctx, lambda ctx=ctx: ExactRun(ctx, engines=running))
        plan = _to_plan(ctx, run, chosen.name)
        if chosen.preloads and settings.allow_sharing and cluster.spec.kind == "gpu":
            plan = _with_preload(ctx, plan, running)
        plans.append(plan)
    if num_samples == 1:
        best = plans[0]
    else:
        scores = [[_replay(ctx, plan, running).end_seconds() for ctx in contexts] for plan in plans]
        index = int(np.argmin([np.mean(s) for s in scores]))
        best, times = plans[index], scores[index]
        best.estimated_seconds = float(np.mean(times))
        best.estimated_seconds_spread = (float(min(times)), float(max(times)))
    best.planning_seconds = time.perf_counter() - started
    return best


def _with_preload(ctx: PlanningContext, plan: Plan, running: dict[str, Assignment] | None) -> Plan:
    """``plan`` or, if one replays faster, its variant that loads an engine during the stage before
    (``preload.py``). The stages before the changed one are replayed once and forked for each share."""
    candidate = longest_preloadable(plan)
    if candidate is None:
        return plan
    k, entry = candidate
    prefix = _replay_stages(ctx, ExactRun(ctx, engines=running), plan.stages[:k])
    best = plan
    for share in RUNNING_SHARES:
        variant = preload(plan, k, entry, share)
        try:
            run = _finish(ctx, _replay_stages(ctx, prefix.fork(), variant.stages[k:]))
        except DoesNotFitError:  # the share leaves too little memory for a model and a minimum KV cache
            continue
        if run.end_seconds() >= best.estimated_seconds - 1e-9:
            break
        best = _to_plan(ctx, run, plan.planner)
    return best


def _replay(ctx: PlanningContext, plan: Plan, running: dict[str, Assignment] | None = None) -> ExactRun:
    """Replay a plan's stages, then finish greedily whatever they leave."""
    return _finish(ctx, _replay_stages(ctx, ExactRun(ctx, engines=running), plan.stages))


def _finish(ctx: PlanningContext, run: ExactRun) -> ExactRun:
    """Complete greedily what the replayed stages left."""
    return drive(ctx, run, GreedyPolicy(ctx)) if not run.done() else run


def _replay_stages(ctx: PlanningContext, run: ExactRun, stages: list[Stage]) -> ExactRun:
    """Continue ``run`` through the listed stages: each runs its engines on its listed nodes until one of them
    finishes."""
    for stage in stages:
        if run.done():
            break
        group = tuple(sorted(_assignment(e.plan, ctx.cluster, ctx.engines[_model(ctx, e.plan.model)])
                             for e in stage.entries))
        listed = {entry.plan.model: [_node(ctx, name) for name in entry.nodes] for entry in stage.entries}
        _check_capacity(group, ctx.cluster)
        if any(n not in run.finished_nodes() for nodes in listed.values() for n in nodes):
            run.run_stage(group, listed)
    return run


def _model(ctx: PlanningContext, model: str) -> str:
    if model not in ctx.engines:
        raise ConfigError(f"the plan runs model {model!r}, which app {ctx.app.name!r} does not use")
    return model


def _node(ctx: PlanningContext, name: str) -> int:
    if name not in ctx.workload.index:
        raise ConfigError(f"the plan lists node {name!r}, which app {ctx.app.name!r} does not have")
    return ctx.workload.index[name]


def _assignment(plan: ExecutionPlan, cluster: Cluster, engines: ModelEngines) -> Assignment:
    """Check an execution plan against the cluster and the model's memory needs.

    A TP1 engine at memory_fraction 0.5 shares its GPU with another computing engine (time-sliced, slowed);
    any other fraction below 1 leaves room for an engine preloading beside it (not slowed).
    """
    option = option_for(plan.tp, plan.replicas, plan.memory_fraction)
    if option.shared and plan.replicas != 1:
        raise ConfigError(f"plan for {plan.model}: GPU sharing (TP1 at memory_fraction 0.5) is one engine; "
                          f"list each shared replica as its own plan")
    if any(not 0 <= g < cluster.num_gpus for g in plan.gpus):
        raise ConfigError(f"plan for {plan.model}: GPUs {list(plan.gpus)} are not all in {cluster}")
    groups = set(cluster.tp_groups(plan.tp))
    for r in range(plan.replicas):
        block = tuple(plan.gpus[r * plan.tp:(r + 1) * plan.tp])
        if block not in groups:
            raise ConfigError(
                f"plan for {plan.model}: TP group {list(block)} is not one of the aligned blocks the "
                f"{cluster.topology} topology connects ({[list(g) for g in sorted(groups)]})"
            )
    if plan.tp not in engines.tps:
        raise DoesNotFitError(
            f"model {plan.model} does not fit TP{plan.tp} on {cluster}; it fits at TP {list(engines.tps)}"
        )
    if option.memory_fraction < 1.0:
        engines.scheduler(option)
    return Assignment(plan.model, option, tuple(plan.gpus))


def _check_capacity(group: tuple[Assignment, ...], cluster: Cluster) -> None:
    """No GPU holds more than one whole engine or two half engines."""
    load = [0.0] * cluster.num_gpus
    for assignment in group:
        for g in assignment.gpus:
            load[g] += assignment.option.memory_fraction
    over = [g for g, used in enumerate(load) if used > 1.0 + 1e-9]
    if over:
        raise ConfigError(f"the stage puts more than one GPU's memory on GPUs {over}; give each engine its own GPUs")


def _to_plan(ctx: PlanningContext, run: ExactRun, planner: str) -> Plan:
    """The replayed run as a Plan."""
    names = [n.name for n in ctx.workload.nodes]
    stages = []
    for record in run.stages:
        entries = [
            StageEntry(
                nodes=[names[n] for n in entry.nodes],
                plan=ExecutionPlan(model=entry.assignment.model, tp=entry.assignment.option.tp,
                                   replicas=entry.assignment.option.replicas, gpus=entry.assignment.gpus,
                                   memory_fraction=entry.assignment.option.memory_fraction),
                load_seconds=entry.load,
                finished_nodes=[names[n] for n in entry.finished],
                requests_done={names[n]: count for n, count in entry.requests_done.items()},
            )
            for entry in record.entries
        ]
        stages.append(Stage(start_seconds=record.start, end_seconds=record.end, entries=entries))
    return Plan(app=ctx.app.name, cluster=str(ctx.cluster), planner=planner, stages=stages,
                estimated_seconds=run.end_seconds())
