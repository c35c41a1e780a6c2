"""The planner's public entry points: plan an app, re-simulate a plan, bound the makespan, re-plan mid-run.

Every estimate here is the faithful replay of a plan (``replay.py``) on sampled output lengths; the
stage model and the curves only steer the search. Planning works on replayed runs (their stage records, the
preload post-pass included) and turns the chosen run into a ``Plan`` once, at the end (``_to_plan``); a
``Plan`` is read back only to evaluate it or from a ``RunState``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import numpy as np

from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.errors import ConfigError, DoesNotFitError
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.limits import CURVE_BATCHES, PLAN_SAMPLES
from samullm_lc.planner.bounds import standalone_lower_bound
from samullm_lc.planner.cluster import Cluster, device_word
from samullm_lc.planner.context import PlanningContext, PlanningSettings, build_app_options, build_context
from samullm_lc.planner.curves import BATCHES_SIMULATED
from samullm_lc.planner.node_split import node_share, on_every_node, one_node
from samullm_lc.planner.options import ModelOptions, option_for
from samullm_lc.planner.placement import Assignment
from samullm_lc.planner.plan import DeviceMemory, ExecutionPlan, Plan, Stage, StageEntry
from samullm_lc.planner.planners import DEFAULT_PLANNER, drive, get_planner
from samullm_lc.planner.preload import RUNNING_SHARES, longest_preloadable, preload
from samullm_lc.planner.replay import ExactRun, StageChoice
from samullm_lc.planner.scale_model import (
    DEFAULT_SCALE_MODEL,
    ScaleModelRule,
    Subsample,
    choose_scale,
    shrinkable,
    subsample,
)
from samullm_lc.planner.search import GreedyPolicy
from samullm_lc.planner.stages import Group
from samullm_lc.planner.state import RunState


def plan_app(
    app: AppGraph,
    cluster: Cluster,
    planner: str = DEFAULT_PLANNER,
    *,
    seed: int = 0,
    num_samples: int = 1,
    allow_gpu_sharing: bool = True,
    allow_replicas: bool = True,
    profiles: dict[str, EngineProfile] | None = None,
    curve_batches: int = BATCHES_SIMULATED,
    scale_model: ScaleModelRule | None = DEFAULT_SCALE_MODEL,
    by_node: bool = False,
) -> Plan:
    """Plan ``app`` on ``cluster``; ``estimated_seconds`` is the faithful replay on the sampled lengths.

    With ``num_samples`` > 1 the planner plans on each output-length sample, keeps the plan with the
    lowest mean over all samples, and reports that mean and the (min, max) spread. ``allow_gpu_sharing``
    also allows the search to load an engine beside the running ones for the next stage (``preload.py``);
    both put two engines on one GPU. ``curve_batches`` is
    how many batches each candidate simulation keeps: more make the search's curves more accurate under
    KV pressure and the planning slower. An app larger than ``scale_model`` allows is planned and estimated
    on a scale model (``scale_model.py``); None replays every request however many there are. With ``by_node``
    the search and greedy plan a large app on several equal nodes for one node, run on each (``node_split.py``:
    planning takes one node's time; the estimate is the node's, and can be optimistic).
    """
    started = time.perf_counter()
    share = node_share(app, cluster, seed=seed) if by_node and get_planner(planner).plans_by_node else None
    options = {"seed": seed, "num_samples": num_samples, "allow_gpu_sharing": allow_gpu_sharing,
               "allow_replicas": allow_replicas, "profiles": profiles, "curve_batches": curve_batches,
               "scale_model": scale_model}
    if share is not None:
        node_plan = plan_app(share, one_node(cluster), planner, **{**options, "allow_gpu_sharing": False})
        split = on_every_node(node_plan, app, share, cluster)
        return split.model_copy(update={"planning_seconds": time.perf_counter() - started})
    settings = _settings(allow_gpu_sharing, allow_replicas, curve_batches)
    model_options = build_app_options(app, cluster, profiles=profiles)
    sample = subsample(app, choose_scale(app, model_options, scale_model), seed=seed)
    return _plan(sample, cluster, planner, model_options, settings, seed=seed, num_samples=num_samples,
                 started=started)


def replan(
    app: AppGraph,
    cluster: Cluster,
    state: RunState,
    planner: str = DEFAULT_PLANNER,
    *,
    seed: int = 0,
    allow_gpu_sharing: bool = True,
    allow_replicas: bool = True,
    profiles: dict[str, EngineProfile] | None = None,
    scale_model: ScaleModelRule | None = DEFAULT_SCALE_MODEL,
) -> Plan:
    """Plan what is left of a run from ``state``; the plan's time 0 is now, running engines start loaded.

    Engines the plan starts are charged their model load only: the runtime's pool starts them in the
    processes of engines it stopped, which have vLLM imported already. ``state`` names the app's nodes and
    request indices; the levels of a node in a loop and a scale model's subsample are mapped from them.
    """
    started = time.perf_counter()
    state.check(app)
    settings = PlanningSettings(allow_sharing=allow_gpu_sharing, allow_replicas=allow_replicas, cold_start=False)
    model_options = build_app_options(app, cluster, profiles=profiles, output_lengths=state.output_lengths,
                                      load_seconds=state.load_seconds)
    running = {m: _assignment(plan, cluster, model_options[m]) for m, plan in state.engines.items() if plan is not None}
    sample = subsample(app, choose_scale(app, model_options, scale_model), seed=seed)
    finished, known = sample.progress(state.finished, state.output_tokens)
    return _plan(sample, cluster, planner, model_options, settings, seed=seed, num_samples=1, started=started,
                 finished=finished, known_outputs=known, running=running)


def evaluate_plan(
    app: AppGraph,
    cluster: Cluster,
    plan: Plan,
    *,
    seed: int = 0,
    profiles: dict[str, EngineProfile] | None = None,
    scale_model: ScaleModelRule | None = DEFAULT_SCALE_MODEL,
) -> float:
    """Re-simulate ``plan`` faithfully on the output lengths of ``seed``; end-to-end seconds.

    Each stage runs its engines on its listed nodes until one of them finishes. If requests are left when
    the listed stages are over (other output lengths can finish nodes in another order), the rest is
    completed greedily. A large app is replayed on the scale model ``plan_app`` would use (None: whole).
    """
    model_options = build_app_options(app, cluster, profiles=profiles)
    sample = subsample(app, choose_scale(app, model_options, scale_model), seed=seed)
    ctx = build_context(sample.app, cluster, model_options, PlanningSettings(), seed=seed, engine_scale=sample.scale)
    return _replay(ctx, _plan_stages(ctx, plan, app)).end_seconds()


def lower_bound_seconds(
    app: AppGraph, cluster: Cluster, *, seed: int = 0, profiles: dict[str, EngineProfile] | None = None,
    curve_batches: int = BATCHES_SIMULATED, scale_model: ScaleModelRule | None = DEFAULT_SCALE_MODEL,
) -> float:
    """max(longest model alone on its fastest plan, total GPU-seconds of work / GPUs), loads included (on the
    curves of ``curve_batches``-batch simulations and the scale model, as ``plan_app``)."""
    model_options = build_app_options(app, cluster, profiles=profiles)
    sample = subsample(app, choose_scale(app, model_options, scale_model), seed=seed)
    ctx = build_context(sample.app, cluster, model_options, _settings(True, True, curve_batches), seed=seed,
                        engine_scale=sample.scale)
    return standalone_lower_bound(ctx)


def _settings(allow_sharing: bool, allow_replicas: bool, curve_batches: int) -> PlanningSettings:
    CURVE_BATCHES.check(curve_batches)
    return PlanningSettings(allow_sharing=allow_sharing, allow_replicas=allow_replicas, curve_batches=curve_batches)


# ---- internals ---------------------------------------------------------------------------------------
def _plan(sample: Subsample, cluster: Cluster, planner: str, model_options: dict[str, ModelOptions],
          settings: PlanningSettings, *, seed: int, num_samples: int, started: float,
          finished: dict[str, np.ndarray] | None = None, known_outputs: dict[str, dict[int, int]] | None = None,
          running: dict[str, Assignment] | None = None) -> Plan:
    PLAN_SAMPLES.check(num_samples)
    chosen = get_planner(planner)
    contexts = [
        build_context(sample.app, cluster, model_options, settings, seed=seed, sample_index=k, finished=finished,
                      known_outputs=known_outputs, engine_scale=sample.scale)
        for k in range(num_samples)
    ]
    if running:  # none for a model or an engine a scale model lacks
        longest = contexts[0].longest_tokens
        running = {m: placed for m, placed in running.items()
                   if m in longest and shrinkable(model_options[m], placed.option, sample.scale, longest[m])}
    runs = []
    for ctx in contexts:
        run = chosen.run(ctx, lambda ctx=ctx: ExactRun(ctx, running=running))
        if chosen.preloads and settings.allow_sharing and cluster.spec.kind == "gpu":
            run = _with_preload(ctx, run, running)
        runs.append(run)
    if num_samples == 1:
        best = _to_plan(contexts[0], runs[0], chosen.name, sample)
    else:
        scores = [[_replay(ctx, [s.choice() for s in run.stages], running).end_seconds() for ctx in contexts]
                  for run in runs]
        index = int(np.argmin([np.mean(s) for s in scores]))
        best, times = _to_plan(contexts[index], runs[index], chosen.name, sample), scores[index]
        best.estimated_seconds = float(np.mean(times))
        best.estimated_seconds_spread = (float(min(times)), float(max(times)))
    best.planning_seconds = time.perf_counter() - started
    return best


def _with_preload(ctx: PlanningContext, run: ExactRun, running: dict[str, Assignment] | None) -> ExactRun:
    """``run`` or, if one replays faster, its variant that loads an engine during the stage before
    (``preload.py``). The stages before the changed one are replayed once and forked for each share."""
    candidate = longest_preloadable(run.stages, run.end_seconds())
    if candidate is None:
        return run
    k, entry = candidate
    prefix = _replay_stages(ctx, ExactRun(ctx, running=running), [s.choice() for s in run.stages[:k]])
    best = run
    for share in RUNNING_SHARES:
        try:
            variant = _finish(ctx, _replay_stages(ctx, prefix.fork(), preload(run.stages, k, entry, share)))
        except DoesNotFitError:  # the share leaves too little memory for a model and a minimum KV cache
            continue
        if variant.end_seconds() >= best.end_seconds() - 1e-9:
            break
        best = variant
    return best


def _replay(ctx: PlanningContext, stages: Iterable[StageChoice], running: dict[str, Assignment] | None = None
            ) -> ExactRun:
    """Replay the stages, then finish greedily whatever they leave."""
    return _finish(ctx, _replay_stages(ctx, ExactRun(ctx, running=running), stages))


def _finish(ctx: PlanningContext, run: ExactRun) -> ExactRun:
    """Complete greedily what the replayed stages left."""
    return drive(ctx, run, GreedyPolicy(ctx)) if not run.done() else run


def _replay_stages(ctx: PlanningContext, run: ExactRun, stages: Iterable[StageChoice]) -> ExactRun:
    """Continue ``run`` through the stages: each runs its placements on its listed nodes until one of them
    finishes (a stage whose nodes have all finished, or can make no progress, is skipped)."""
    for stage in stages:
        if run.done():
            break
        _check_stage(ctx, stage.group, {model for model, nodes in stage.nodes.items() if nodes})
        if any(n not in run.finished_nodes() for nodes in stage.nodes.values() for n in nodes) and \
                run.can_progress(stage):
            run.run_stage(stage.group, stage.nodes)
    return run


def _plan_stages(ctx: PlanningContext, plan: Plan, app: AppGraph) -> Iterator[StageChoice]:
    """A plan's stages as replay input, each checked against the cluster and the app as it is reached."""
    for stage in plan.stages:
        group = tuple(sorted(_assignment(e.plan, ctx.cluster, ctx.model_options[_model(ctx, e.plan.model)])
                             for e in stage.entries))
        yield StageChoice(group, {e.plan.model: [n for name in e.nodes for n in _nodes(ctx, name, app)]
                                  for e in stage.entries})


def _model(ctx: PlanningContext, model: str) -> str:
    if model not in ctx.model_options:
        raise ConfigError(f"the plan runs model {model!r}, which app {ctx.app.name!r} does not use")
    return model


def _nodes(ctx: PlanningContext, name: str, app: AppGraph) -> list[int]:
    """The planner nodes of an app node a plan lists (its levels if it is in a loop; none if a scale model's subsample
    has no request of it)."""
    if name not in ctx.workload.app_nodes:
        if any(node.name == name for node in app.nodes):
            return []
        raise ConfigError(f"the plan lists node {name!r}, which app {app.name!r} does not have")
    return ctx.app_node_parts(name)


def _assignment(plan: ExecutionPlan, cluster: Cluster, options: ModelOptions) -> Assignment:
    """Check an execution plan against the cluster and the model: each replica on an aligned TP block the
    topology connects, at a degree the model fits."""
    if any(not 0 <= g < cluster.num_gpus for g in plan.gpus):
        raise ConfigError(f"plan for {plan.model}: {device_word(cluster)} {list(plan.gpus)} are not all in {cluster}")
    groups = set(cluster.tp_groups(plan.tp))
    for block in plan.replica_devices():
        if block not in groups:
            raise ConfigError(
                f"plan for {plan.model}: TP group {list(block)} is not one of the aligned blocks the "
                f"{cluster.topology} topology connects ({[list(g) for g in sorted(groups)]})"
            )
    if plan.tp not in options.tps:
        raise DoesNotFitError(
            f"model {plan.model} does not fit TP{plan.tp} on {cluster}; it fits at TP {list(options.tps)}"
        )
    return Assignment(plan.model, option_for(plan), tuple(plan.gpus))


def _check_stage(ctx: PlanningContext, group: Group, serving: set[str] | None = None) -> None:
    """Every engine's memory share holds its model and a minimum KV cache (``DoesNotFitError`` if not), no GPU
    holds more than all of its memory, and engines on one GPU that compute in the stage (``serving``: the models
    with nodes; None: all) are all time-sliced (``ConfigError``): only a time-sliced engine is priced as sharing
    its GPU's compute."""
    for placed in group:
        if placed.option.memory_fraction < 1.0:
            ctx.model_options[placed.model].scheduler(placed.option)
    over = DeviceMemory((placed.gpus, placed.option.memory_fraction) for placed in group).over_committed()
    one, many = device_word(ctx.cluster, plural=False), device_word(ctx.cluster)
    if over:
        raise ConfigError(f"the stage puts more than one {one}'s memory on {many} {over}; give each engine its own "
                          f"{many}")
    computing = [p for p in group if serving is None or p.model in serving]
    for gpu in {g for p in computing for g in p.gpus}:
        sharing = [p for p in computing if gpu in p.gpus]
        if len(sharing) > 1 and not all(p.option.time_sliced for p in sharing):
            raise ConfigError(
                f"the stage runs {', '.join(p.model for p in sharing)} on {one} {gpu} at the same time; set "
                f"time_sliced: true on each of them (they then share its compute), or give all but one no nodes "
                f"(they load for the next stage)")


def _to_plan(ctx: PlanningContext, run: ExactRun, planner: str, sample: Subsample) -> Plan:
    """The replayed run as a Plan, in the app's nodes: the levels of a node in a loop are listed as the node, finished
    in the stage its last level finishes; a scale model's request counts scaled to the app's."""
    app_node = [n.app_node for n in ctx.workload.nodes]
    finished = {n for n, work in enumerate(ctx.workload.nodes) if work.done.all()}  # before planning
    stages = []
    for record in run.stages:
        finished.update(n for entry in record.entries for n in entry.finished)
        entries = []
        for entry in record.entries:
            requests_done: dict[str, int] = {}
            for n, count in entry.requests_done.items():
                requests_done[app_node[n]] = requests_done.get(app_node[n], 0) + count
            entries.append(StageEntry(
                nodes=list(dict.fromkeys(app_node[n] for n in entry.nodes)),
                plan=_execution_plan(entry.assignment),
                load_seconds=entry.load,
                finished_nodes=list(dict.fromkeys(
                    app_node[n] for n in entry.finished
                    if finished.issuperset(ctx.app_node_parts(app_node[n])))),
                requests_done={node: sample.full_count(node, count) for node, count in requests_done.items()},
            ))
        stages.append(Stage(start_seconds=record.start, end_seconds=record.end, entries=entries))
    return Plan(app=sample.full.name, cluster=str(ctx.cluster), planner=planner, stages=stages,
                estimated_seconds=run.end_seconds())


def _execution_plan(placed: Assignment) -> ExecutionPlan:
    """The execution plan of a placement (``options.option_for`` reads it back)."""
    option = placed.option
    return ExecutionPlan(model=placed.model, tp=option.tp, replicas=option.replicas, gpus=placed.gpus,
                         memory_fraction=option.memory_fraction, time_sliced=option.time_sliced)
