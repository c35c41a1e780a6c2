"""With ``by_node``, large apps on equal nodes are planned for one node and run on each: a valid plan for the
whole cluster whose estimate a replay of the whole app on every node confirms; small apps and clusters that
lost a node are planned whole."""

import numpy as np

from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.planner import Cluster, evaluate_plan, plan_app
from samullm_lc.planner.node_split import MIN_INPUTS_PER_NODE, node_share
from samullm_lc.runtime.planning import check_given_plan


def _ensemble(n: int) -> AppGraph:
    rng = np.random.default_rng(3)
    members = ["Llama-2-7b-hf", "Mistral-7B-Instruct-v0.2"]
    nodes = [LLMNode(name=m, model=m, input_tokens=rng.integers(50, 400, n).tolist(), max_tokens=128)
             for m in members]
    nodes.append(LLMNode(name="fuse", model="Llama-2-13b-hf", input_tokens=[64] * n, max_tokens=64,
                         depends_on=members))
    return AppGraph(name="ensemble", nodes=nodes)


def test_a_large_app_is_planned_for_one_node_and_run_on_every_node():
    cluster = Cluster.parse("2x4xA100-80GB")
    app = _ensemble(2 * MIN_INPUTS_PER_NODE)
    plan = plan_app(app, cluster, by_node=True)
    check_given_plan(plan, app, cluster)  # a plan the pool takes as it is
    assert plan.cluster == str(cluster) and plan.app == app.name
    for stage in plan.stages:
        for entry in stage.entries:
            on_node = [[g for g in entry.plan.gpus if cluster.node_of(g) == node] for node in range(2)]
            assert [g - 4 for g in on_node[1]] == on_node[0]  # the same engines at the same place on each node
    whole_replay = evaluate_plan(app, cluster, plan)
    assert abs(whole_replay / plan.estimated_seconds - 1) < 0.05  # the estimate holds for the whole app
    assert node_share(app, cluster) is not None and node_share(app, cluster).inputs_count == MIN_INPUTS_PER_NODE


def test_small_apps_one_node_and_clusters_that_lost_a_node_are_planned_whole():
    cluster = Cluster.parse("2x4xA100-80GB")
    large = _ensemble(2 * MIN_INPUTS_PER_NODE)
    assert node_share(_ensemble(MIN_INPUTS_PER_NODE), cluster) is None  # 500 inputs per node
    assert node_share(large, Cluster.parse("1x8xA100-80GB")) is None
    left = cluster.without(cluster.node_devices(1))
    assert node_share(large, left) is None
    plan = plan_app(large, left, by_node=True)
    assert {g for s in plan.stages for e in s.entries for g in e.plan.gpus} <= set(range(4))
