"""What the driver plans with: a plan made before the run (checked against the pool's app and cluster), or the
planner's plan of what is left, told what the run observed.

The first plan of a run with nothing finished is the planner's ``plan_app``; every later one is its ``replan`` on
a ``RunState``: requests finished and their output tokens (from the ``RequestBook``), the engines each model runs
and their measured load times (from the ``EngineSet``), and output-length distributions refined by the lengths
observed. A pool given a plan (``EnginePool(plan=...)``, e.g. made on the traced graph before the real calls)
starts that plan's first stage and plans only later stages this way.

Why apart from the driver: what the planner is told, and whether a plan from elsewhere can run on this pool, can
be read without the driver's loop.
"""

from __future__ import annotations

from collections.abc import Mapping

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.errors import ConfigError
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.planner import plan_app, replan
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.plan import DeviceMemory, Plan
from samullm_lc.planner.state import RunState
from samullm_lc.runtime.engine_set import EngineSet
from samullm_lc.runtime.request_book import RequestBook

PLAN_FIX = "make the plan with plan_app(app, cluster) for this pool's app graph and cluster, or leave plan= out"


def check_given_plan(plan: Plan, app: AppGraph | None, cluster: Cluster) -> None:
    """Raise ``ConfigError`` naming the mismatch and the fix unless ``plan`` was made for ``app`` on ``cluster``:
    the same cluster, only the app's models and nodes, every node served by some stage, and each stage's
    engines on the cluster's devices within their memory."""
    if not isinstance(plan, Plan):
        raise ConfigError(f"plan must be a samullm_lc Plan (from plan_app), got {type(plan).__name__}")
    if app is None:
        raise ConfigError(f"a plan needs the app graph it was made for: give EnginePool the app of plan {plan.app!r}")
    if plan.cluster != str(cluster) and not _same_cluster(plan.cluster, cluster):
        raise ConfigError(f"plan {plan.app!r} was made for cluster {plan.cluster}, the pool runs on {cluster}; "
                          f"{PLAN_FIX}")
    entries = [entry for stage in plan.stages for entry in stage.entries]
    models = {entry.plan.model for entry in entries}
    served = {name for entry in entries for name in entry.nodes}
    nodes = {node.name for node in app.nodes}
    problems = []
    if models - set(app.models()):
        problems.append(f"it runs models {sorted(models - set(app.models()))} that the app does not use")
    if served - nodes:
        problems.append(f"it serves nodes {sorted(served - nodes)} that the app does not have")
    if nodes - served:
        problems.append(f"no stage serves the app's nodes {sorted(nodes - served)}")
    for name in served & nodes:
        if any(name in entry.nodes and entry.plan.model != app.node(name).model for entry in entries):
            problems.append(f"it runs node {name!r} on a model other than the app's {app.node(name).model!r}")
    for index, stage in enumerate(plan.stages):
        gpus = sorted({g for entry in stage.entries for g in entry.plan.gpus if not 0 <= g < cluster.num_gpus})
        if gpus:
            problems.append(f"stage {index} uses devices {gpus}, which {cluster} does not have")
        memory = DeviceMemory((e.plan.gpus, e.plan.memory_fraction) for e in stage.entries)
        if memory.over_committed():
            problems.append(f"stage {index} puts more than one device's memory on devices {memory.over_committed()}")
    if problems:
        raise ConfigError(f"plan {plan.app!r} does not fit app {app.name!r}: {'; '.join(problems)}; {PLAN_FIX}")


def plan_rest(app: AppGraph, cluster: Cluster, book: RequestBook, engines: EngineSet, *, first: bool, planner: str,
              seed: int, profiles: dict[str, EngineProfile], now: float) -> Plan:
    """Plan ``app`` (the book's ``planned_app``) from what the run observed: ``plan_app`` for the first plan of a
    run with nothing finished, else ``replan``. Raises the planner's ``SamullmError`` if it cannot."""
    state = run_state(app, book, engines, profiles, now)
    if first and not state.finished:
        return plan_app(app, cluster, planner, seed=seed, profiles=profiles)
    return replan(app, cluster, state, planner, seed=seed, profiles=profiles)


def run_state(app: AppGraph, book: RequestBook, engines: EngineSet, profiles: Mapping[str, EngineProfile],
              now: float) -> RunState:
    """What the planner's ``replan`` is told: progress, running engines, observed lengths and load seconds."""
    models = app.models()
    finished, outputs = book.node_progress({node.name for node in app.nodes})

    def base_lengths(model: str) -> OutputLengthDistribution:
        profile = profiles.get(model)
        if profile is not None and profile.output_lengths is not None:
            return profile.output_lengths
        return OutputLengthDistribution.sharegpt()

    return RunState(finished=finished, output_tokens=outputs,
                    engines={model: engines.running_plan(model) for model in models},
                    output_lengths=book.refined_lengths(models, base_lengths),
                    load_seconds=engines.load_seconds(models), elapsed_seconds=now)


__all__ = ["check_given_plan", "plan_rest", "run_state"]


def _same_cluster(text: str, cluster: Cluster) -> bool:
    """Whether a plan's cluster text names ``cluster`` (texts of older versions included, e.g. ``2xcpu (pcie)``)."""
    try:
        return str(Cluster.from_text(text)) == str(cluster)
    except ConfigError:
        return False
