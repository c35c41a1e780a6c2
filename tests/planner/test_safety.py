"""Plans never oversubscribe GPU memory or split TP groups across unconnected GPUs; bad inputs fail clearly."""

from __future__ import annotations

import pytest

from samullm_lc.errors import ConfigError, DoesNotFitError
from samullm_lc.planner import PLANNERS, Cluster, ExecutionPlan, Plan, Stage, StageEntry, evaluate_plan, plan_app
from tests.planner.conftest import BIG, SMALL, TINY, make_app


def _check_plan(plan: Plan, cluster: Cluster) -> None:
    for stage in plan.stages:
        memory = [0.0] * cluster.num_gpus
        for entry in stage.entries:
            p = entry.plan
            groups = set(cluster.tp_groups(p.tp))
            for r in range(p.replicas):
                assert tuple(p.gpus[r * p.tp:(r + 1) * p.tp]) in groups
            for g in p.gpus:
                memory[g] += p.memory_fraction
        assert max(memory) <= 1.0 + 1e-9


@pytest.mark.parametrize("topology", ["nvswitch", "nvlink-pairs", "pcie"])
def test_every_planner_respects_memory_and_tp_groups(topology):
    cluster = Cluster.parse("4xA100-80GB", topology)
    app = make_app("mixed", [("big", BIG, []), ("small", SMALL, []), ("tiny", TINY, []), ("after", SMALL, ["tiny"])],
                   requests=32)
    for name in PLANNERS:
        _check_plan(plan_app(app, cluster, name), cluster)


def test_big_model_never_lands_below_the_tp_it_needs():
    cluster = Cluster.parse("4xA100-80GB")
    plan = plan_app(make_app("big", [("big", BIG, [])], requests=16), cluster)
    assert all(e.plan.tp >= 2 for s in plan.stages for e in s.entries)


def test_model_that_fits_nowhere_names_itself_and_its_memory():
    app = make_app("huge", [("big", BIG, [])], requests=4)
    with pytest.raises(DoesNotFitError, match=r"Llama-2-70b-chat-hf.*GiB"):
        plan_app(app, Cluster.parse("1xA100-40GB"))


def test_sharing_off_means_whole_gpus():
    app = make_app("smalls", [("a", TINY, []), ("b", SMALL, []), ("c", TINY, ["a"])], requests=32)
    for name in PLANNERS:
        if name == "per-model-pools":  # a pool per model at once: two models cannot share one whole GPU
            with pytest.raises(DoesNotFitError, match="need at least 2 GPUs"):
                plan_app(app, Cluster.parse("1xA100-80GB"), name, allow_gpu_sharing=False)
            continue
        plan = plan_app(app, Cluster.parse("1xA100-80GB"), name, allow_gpu_sharing=False)
        assert all(e.plan.memory_fraction == 1.0 for s in plan.stages for e in s.entries)


def test_two_small_models_may_share_one_gpu():
    app = make_app("pair", [("a", TINY, []), ("b", SMALL, [])], requests=32)
    plan = plan_app(app, Cluster.parse("1xA100-80GB"), "muxserve-like")
    first = plan.stages[0]
    assert len(first.entries) == 2 and all(e.plan.memory_fraction == 0.5 for e in first.entries)
    assert {e.plan.gpus for e in first.entries} == {(0,)}


def test_no_replicas_means_one_engine_per_model():
    app = make_app("one", [("a", SMALL, [])], requests=32)
    plan = plan_app(app, Cluster.parse("4xA100-80GB"), allow_replicas=False)
    assert all(e.plan.replicas == 1 for s in plan.stages for e in s.entries)


def _one_stage_plan(entries: list[ExecutionPlan], nodes: list[list[str]]) -> Plan:
    stage = Stage(start_seconds=0, end_seconds=0,
                  entries=[StageEntry(nodes=n, plan=p) for p, n in zip(entries, nodes, strict=True)])
    return Plan(app="two", cluster="x", planner="hand", stages=[stage], estimated_seconds=0)


def test_hand_written_plan_with_split_tp_group_is_rejected(two_independent):
    cluster = Cluster.parse("4xA100-80GB")
    plan = _one_stage_plan([ExecutionPlan(model=SMALL, tp=2, gpus=(1, 2))], [["a"]])
    with pytest.raises(ConfigError, match="TP group"):
        evaluate_plan(two_independent, cluster, plan)


def test_hand_written_plan_oversubscribing_a_gpu_is_rejected(two_independent):
    cluster = Cluster.parse("2xA100-80GB")
    plan = _one_stage_plan(
        [ExecutionPlan(model=SMALL, gpus=(0,)), ExecutionPlan(model=two_independent.nodes[1].model, gpus=(0,))],
        [["a"], ["b"]],
    )
    with pytest.raises(ConfigError, match="GPUs \\[0\\]"):
        evaluate_plan(two_independent, cluster, plan)


def test_two_engines_computing_on_one_gpu_must_both_be_time_sliced(two_independent):
    cluster = Cluster.parse("2xA100-80GB")
    other = two_independent.nodes[1].model

    def halves(time_sliced: bool) -> Plan:
        return _one_stage_plan([ExecutionPlan(model=SMALL, gpus=(0,), memory_fraction=0.5, time_sliced=time_sliced),
                                ExecutionPlan(model=other, gpus=(0,), memory_fraction=0.5, time_sliced=time_sliced)],
                               [["a"], ["b"]])

    with pytest.raises(ConfigError, match="time_sliced: true"):
        evaluate_plan(two_independent, cluster, halves(False))
    sliced = evaluate_plan(two_independent, cluster, halves(True))
    alone = evaluate_plan(two_independent, cluster, _one_stage_plan(
        [ExecutionPlan(model=SMALL, gpus=(0,)), ExecutionPlan(model=other, gpus=(1,))], [["a"], ["b"]]))
    assert sliced > alone  # sharing a GPU's compute is priced as slower than a GPU each


def test_hand_written_plan_below_the_needed_tp_does_not_fit():
    app = make_app("big", [("big", BIG, [])], requests=8)
    plan = _one_stage_plan([ExecutionPlan(model=BIG, tp=1, gpus=(0,))], [["big"]])
    with pytest.raises(DoesNotFitError, match="Llama-2-70b-chat-hf"):
        evaluate_plan(app, Cluster.parse("4xA100-80GB"), plan)


def test_hand_written_plan_is_replayed_and_completed(two_independent):
    cluster = Cluster.parse("2xA100-80GB")
    plan = _one_stage_plan([ExecutionPlan(model=SMALL, gpus=(0,))], [["a"]])
    seconds = evaluate_plan(two_independent, cluster, plan)
    assert seconds > 0
