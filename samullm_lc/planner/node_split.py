"""Plans for a cluster of equal nodes made for one node: each node runs the same plan on its share of inputs.

An app of many independent inputs on ``n`` nodes is planned for one node with ``1/n`` of the inputs (a draw of
whole inputs, ``AppGraph.scaled``), and that plan runs on every node: each engine of the one-node plan becomes
``n`` engines, one at the same place on each node. Its estimate is the one node's. The pool spreads a model's
requests over all its replicas, so each node gets its share of every node of the app, as planned.

Why: the whole-cluster search simulates every replica of every candidate on all the GPUs, so its time grows
with the cluster (6 to 14 s at 8 nodes of 8 GPUs for the largest apps of `benchmarks/ray_cluster_sim.py`, at
100,000 inputs), while a node's plan takes what one node takes (at most about 3 s there).

Why it is not the default (``plan_app(by_node=True)`` asks for it): the estimate is one node's, and the whole
run waits for the slowest node at every stage boundary (a model finishes when its last replica on any node
does), so the same plan replayed on the whole app and cluster took up to 28% longer than estimated there;
and every node loads every model it runs, which costs most on apps whose loads weigh much (the traced Mixed
example at 10,000 inputs: 15-22% slower than planned whole). A cluster is split only when each node gets at
least ``MIN_INPUTS_PER_NODE`` inputs; a cluster with lost devices is planned whole. The node's plan shares no
GPU (no time-sliced engine, no preload): a time-sliced engine is one replica, and the replay and the run state
keep one plan per model.
"""

from __future__ import annotations

from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.plan import ExecutionPlan, Plan, Stage, StageEntry

MIN_INPUTS_PER_NODE = 1_000
"""Inputs each node must get for a multi-node cluster to be planned one node at a time (pairs of nodes were
also tried: 8 nodes planned in up to 4.7 s, better than single nodes on some apps, worse on others)."""
def node_share(app: AppGraph, cluster: Cluster, *, seed: int = 0) -> AppGraph | None:
    """One node's share of ``app`` (a draw of ``1/n`` of its inputs) if ``cluster`` is planned by node, else None:
    one node, nodes of unequal size, lost devices, too few inputs per node, or a share that misses a node."""
    nodes = cluster.num_nodes
    if nodes < 2 or cluster.num_gpus % cluster.devices_per_node or cluster.lost_devices \
            or app.inputs_count // nodes < MIN_INPUTS_PER_NODE:
        return None
    share = app.scaled(app.inputs_count // nodes, seed=seed)
    if {n.name for n in share.nodes} != {n.name for n in app.nodes}:
        return None  # a rarely routed node drew no input: plan the whole app
    return share


def one_node(cluster: Cluster) -> Cluster:
    """The first node of ``cluster`` as a cluster of its own."""
    per_node = cluster.devices_per_node
    return cluster.model_copy(update={"num_gpus": per_node, "gpus_per_node": per_node})


def on_every_node(plan: Plan, app: AppGraph, share: AppGraph, cluster: Cluster) -> Plan:
    """``plan`` (made for ``share`` on one node) run on every node of ``cluster``: each engine repeated at the same
    place on every node, each stage's request counts scaled from the share to ``app``."""
    nodes, span = cluster.num_nodes, cluster.devices_per_node
    ratio = {n.name: n.num_requests / max(1, share.node(n.name).num_requests) for n in app.nodes}

    def entries(entry: StageEntry) -> list[StageEntry]:
        done = {name: round(count * ratio[name]) for name, count in entry.requests_done.items()}
        copies = [tuple(g + node * span for g in entry.plan.gpus) for node in range(nodes)]
        if entry.plan.time_sliced:  # a time-sliced engine is one replica: one entry per node
            plans = [entry.plan.model_copy(update={"gpus": gpus}) for gpus in copies]
        else:
            plans = [ExecutionPlan(model=entry.plan.model, tp=entry.plan.tp, replicas=entry.plan.replicas * nodes,
                                   gpus=tuple(g for gpus in copies for g in gpus),
                                   memory_fraction=entry.plan.memory_fraction)]
        return [entry.model_copy(update={"plan": p, "requests_done": done if i == 0 else {}})
                for i, p in enumerate(plans)]

    stages = [Stage(start_seconds=s.start_seconds, end_seconds=s.end_seconds,
                    entries=[copy for entry in s.entries for copy in entries(entry)]) for s in plan.stages]
    return plan.model_copy(update={"app": app.name, "cluster": str(cluster), "stages": stages})
