"""Clusters over several nodes: the NODESxPERxHARDWARE form, TP inside a node, loads from shared storage priced,
and plans made without a node that left."""

import numpy as np
import pytest

from samullm_lc.costmodel.architecture import resolve_architecture
from samullm_lc.costmodel.load import STORAGE_READ_BYTES_PER_SECOND
from samullm_lc.errors import ConfigError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.planner import Cluster, plan_app
from samullm_lc.planner.options import build_model_options


def test_the_three_part_form_reads_nodes_of_devices_and_round_trips():
    cluster = Cluster.parse("2x8xA100-80GB")
    assert (cluster.num_gpus, cluster.num_nodes, cluster.devices_per_node) == (16, 2, 8)
    assert str(cluster) == "2x8xA100-80GB (nvswitch)"
    assert Cluster.model_validate_json(cluster.model_dump_json()) == cluster
    assert cluster.node_of(9) == 1 and cluster.node_devices(1) == tuple(range(8, 16))
    assert Cluster.parse("4x2xcpu").num_nodes == 4
    # the two-part form keeps its meaning: nodes of the hardware's size
    assert Cluster.parse("16xA100-80GB").num_nodes == 2
    assert str(Cluster.parse("8xA100-80GB")) == "8xA100-80GB (nvswitch)"


@pytest.mark.parametrize(("spec", "words"), [
    ("2x16xA100-80GB", "larger than the 8"),
    ("0x8xA100-80GB", "at least 1"),
    ("2x8xB9000", "unknown hardware"),
])
def test_a_node_the_model_does_not_know_is_refused_with_the_fix(spec, words):
    with pytest.raises(ConfigError, match=words):
        Cluster.parse(spec)
    with pytest.raises(ConfigError, match="do not fill nodes of 8"):
        Cluster(hardware="A100-80GB", num_gpus=12, gpus_per_node=8)


def test_tensor_parallel_groups_never_span_nodes_nor_touch_lost_devices():
    cluster = Cluster.parse("2x4xA100-80GB")
    assert cluster.tp_degrees() == [1, 2, 4]
    assert cluster.tp_groups(4) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    left = cluster.without(cluster.node_devices(0))
    assert left.usable_gpus == 4 and left.tp_groups(2) == [(4, 5), (6, 7)]
    assert "less lost devices [0, 1, 2, 3]" in str(left)
    with pytest.raises(ConfigError, match="no node is left"):
        left.without(left.node_devices(1))


def test_loading_from_shared_storage_over_the_network_is_priced_per_engine():
    local = Cluster.parse("2x8xA100-80GB")
    shared = local.model_copy(update={"storage_gb_per_s": 10.0, "network_gb_per_s": 1.25})  # a 10 Gb/s link
    weights = resolve_architecture("Llama-2-7b-hf").weight_bytes
    assert local.weight_read_extra_seconds(weights) == 0.0
    expected = weights / 1.25e9 - weights / STORAGE_READ_BYTES_PER_SECOND  # the network is the narrower pipe
    assert shared.weight_read_extra_seconds(weights) == pytest.approx(expected)
    slow = build_model_options("Llama-2-7b-hf", shared).load_seconds[1]
    fast = build_model_options("Llama-2-7b-hf", local).load_seconds[1]
    assert slow == pytest.approx(fast + expected)


def _two_models(n: int) -> AppGraph:
    rng = np.random.default_rng(0)
    return AppGraph(name="pair", nodes=[
        LLMNode(name=m, model=m, input_tokens=rng.integers(50, 400, n).tolist(), max_tokens=256)
        for m in ("Llama-2-7b-hf", "Llama-2-13b-hf")])


def test_a_plan_spreads_models_over_nodes_and_one_made_after_a_node_left_uses_only_the_rest():
    app = _two_models(2000)
    cluster = Cluster.parse("2x4xA100-80GB")
    plan = plan_app(app, cluster)
    used = {g for stage in plan.stages for entry in stage.entries for g in entry.plan.gpus}
    assert {cluster.node_of(g) for g in used} == {0, 1}
    left = cluster.without(cluster.node_devices(1))
    after = plan_app(app, left)
    used = {g for stage in after.stages for entry in stage.entries for g in entry.plan.gpus}
    assert used and used <= set(cluster.node_devices(0))
    assert after.estimated_seconds > plan.estimated_seconds
