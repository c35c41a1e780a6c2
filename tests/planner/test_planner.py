"""Planner behaviour on small hand-checkable apps: concurrency, order, fusion, progress, bounds, registry."""

from __future__ import annotations

import numpy as np
import pytest

from samullm_lc.costmodel.simulator import simulate
from samullm_lc.errors import ConfigError
from samullm_lc.planner import PLANNERS, Cluster, Plan, evaluate_plan, lower_bound_seconds, plan_app
from samullm_lc.planner.context import PlanningSettings, build_app_options, build_context
from samullm_lc.planner.options import EngineOption
from tests.planner.conftest import SMALL, TINY, make_app

TWO_GPUS = Cluster.parse("2xA100-80GB")


def test_registry_names():
    assert set(PLANNERS) == {"greedy", "search", "exhaustive", "sequential", "all-at-once", "muxserve-like",
                             "per-model-pools"}


def test_unknown_planner_is_a_clear_error(two_independent):
    with pytest.raises(ConfigError, match="unknown planner 'fastest'.*search"):
        plan_app(two_independent, TWO_GPUS, "fastest")


def test_two_independent_models_run_concurrently_and_beat_sequential(two_independent):
    searched = plan_app(two_independent, TWO_GPUS)
    sequential = plan_app(two_independent, TWO_GPUS, "sequential")
    first = searched.stages[0]
    assert {e.plan.model for e in first.entries} == {n.model for n in two_independent.nodes}
    assert searched.estimated_seconds < sequential.estimated_seconds
    assert all(len(stage.entries) == 1 for stage in sequential.stages)


def test_chain_runs_upstream_first(chain_app):
    plan = plan_app(chain_app, TWO_GPUS)
    finished_at = {name: stage.end_seconds for stage in plan.stages for e in stage.entries
                   for name in e.finished_nodes}
    assert finished_at["first"] <= finished_at["second"]
    for stage in plan.stages:
        nodes = {n for e in stage.entries for n in e.nodes}
        if "second" in nodes and "first" not in nodes:
            assert finished_at["first"] <= stage.start_seconds


def test_vertical_fusion_loads_the_model_once(fused_chain):
    plan = plan_app(fused_chain, TWO_GPUS, "sequential")
    loads = [e.load_seconds for stage in plan.stages for e in stage.entries if e.load_seconds > 0]
    assert len(loads) == 1
    # One model serves the fused chain, and a stage ends when its first *model* finishes: one stage.
    assert len(plan.stages) == 1 and len({e.plan for s in plan.stages for e in s.entries}) == 1
    assert plan.stages[0].entries[0].nodes == ["c0", "c1", "c2"]
    searched = plan_app(fused_chain, TWO_GPUS)
    assert searched.stages[0].entries[0].nodes == ["c0", "c1", "c2"]


def test_replay_feeds_a_fused_chain_each_request_as_its_upstream_request_finishes(fused_chain):
    # On one GPU the chain runs on one engine replica: the replay must equal one simulation of all its
    # requests, each waiting for the request it reads, after the model's load.
    one_gpu = Cluster.parse("1xA100-80GB")
    plan = plan_app(fused_chain, one_gpu, "sequential")
    options = build_app_options(fused_chain, one_gpu)
    work = build_context(fused_chain, one_gpu, options, PlanningSettings()).workload.nodes
    option, n = EngineOption(), work[0].num_requests
    chained = simulate(options[SMALL].scheduler(option), options[SMALL].latency(option),
                       np.concatenate([w.prompt for w in work]), np.concatenate([w.output for w in work]),
                       after=[[]] * n + [[k - n] for k in range(n, 3 * n)])
    assert plan.estimated_seconds == pytest.approx(options[SMALL].load(option) + chained.total_seconds, rel=1e-9)


def test_stage_ends_at_first_finish_and_progress_carries_over():
    app = make_app("uneven", [("short", TINY, []), ("long", SMALL, [])], outputs={"long": 600})
    plan = plan_app(app, TWO_GPUS, "all-at-once")
    first, second = plan.stages[0], plan.stages[1]
    assert [n for e in first.entries for n in e.finished_nodes] == ["short"]
    long_entry = next(e for e in first.entries if e.plan.model == SMALL)
    assert 0 <= long_entry.requests_done["long"] < 64
    carried = next(e for e in second.entries if e.plan.model == SMALL)
    assert carried.load_seconds == 0.0 and carried.plan == long_entry.plan
    assert second.start_seconds == first.end_seconds


def test_estimate_is_the_faithful_replay(chain_app):
    plan = plan_app(chain_app, TWO_GPUS)
    assert evaluate_plan(chain_app, TWO_GPUS, plan) == pytest.approx(plan.estimated_seconds, rel=1e-9)


def test_plan_json_round_trip(chain_app):
    plan = plan_app(chain_app, TWO_GPUS)
    again = Plan.model_validate_json(plan.model_dump_json())
    assert again == plan
    assert "stage 0" in again.describe()


def test_curve_batches_reach_the_candidate_simulations_and_are_checked(two_independent):
    app = make_app("long", [("a", SMALL, [])], requests=2000)
    seconds = {}
    for batches in (2, 24):
        ctx = build_context(app, TWO_GPUS, build_app_options(app, TWO_GPUS), PlanningSettings(curve_batches=batches))
        seconds[batches] = ctx.curves[SMALL].curve(EngineOption(1)).standalone_seconds
    assert seconds[2] != pytest.approx(seconds[24], rel=1e-6)
    assert lower_bound_seconds(app, TWO_GPUS, curve_batches=24) <= plan_app(
        app, TWO_GPUS, curve_batches=24).estimated_seconds + 1e-6
    with pytest.raises(ConfigError, match=r"curve batches\) must be at least 1"):
        plan_app(two_independent, TWO_GPUS, curve_batches=0)


def test_lower_bound_is_below_every_planner(two_independent):
    bound = lower_bound_seconds(two_independent, TWO_GPUS)
    for name in PLANNERS:
        assert bound <= plan_app(two_independent, TWO_GPUS, name).estimated_seconds + 1e-6, name


def test_search_is_never_worse_than_greedy(chain_app, two_independent):
    for app in (chain_app, two_independent):
        assert (plan_app(app, TWO_GPUS, "search").estimated_seconds
                <= plan_app(app, TWO_GPUS, "greedy").estimated_seconds + 1e-9)


def test_exhaustive_is_at_least_as_good_as_the_baselines(two_independent):
    best = plan_app(two_independent, TWO_GPUS, "exhaustive").estimated_seconds
    for name in ("sequential", "all-at-once", "muxserve-like"):
        assert best <= plan_app(two_independent, TWO_GPUS, name).estimated_seconds * 1.02


def test_several_samples_give_a_spread(two_independent):
    plan = plan_app(two_independent, TWO_GPUS, num_samples=3)
    low, high = plan.estimated_seconds_spread
    assert low <= plan.estimated_seconds <= high


def test_planning_time_is_reported(two_independent):
    plan = plan_app(two_independent, TWO_GPUS, "greedy")
    assert 0 < plan.planning_seconds < 30
