"""``samullm.plan(graph, devices)``: plan an app graph for a set of devices before running it.

A batch evaluation script can trace once (``samullm.trace``), plan once, save both, and run every later batch
with ``offline(graph=..., plan=...)`` without tracing or planning again. On the CPU engine the planner needs
each model's measured speed: it is measured once per model and cached, as ``offline()`` does.
"""

from __future__ import annotations

from typing import Any

from samullm_lc.errors import ConfigError
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.langchain.session_options import cluster_of
from samullm_lc.planner.api import plan_app
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.plan import Plan
from samullm_lc.planner.planners import DEFAULT_PLANNER


def plan(graph: AppGraph, devices: str | Cluster | None = None, *, planner: str = DEFAULT_PLANNER,
         profiles: dict[str, Any] | None = None, seed: int = 0) -> Plan:
    """The plan for ``graph`` on ``devices`` (``"8xA100-80GB"``; default: this machine's GPUs, else one CPU engine
    slot per core); ``profiles`` gives measured engine profiles by model."""
    if not isinstance(graph, AppGraph):
        raise ConfigError(f"plan(graph, devices) takes an AppGraph (from samullm.trace or AppGraph.load), got "
                          f"{type(graph).__name__}")
    cluster = cluster_of(devices)
    profiles = dict(profiles or {})
    if cluster.spec.kind == "cpu":
        from samullm_lc.profiling.pool_profiles import pool_profiles

        profiles |= pool_profiles([m for m in graph.models() if m not in profiles])
    return plan_app(graph, cluster, planner, profiles=profiles, seed=seed)
