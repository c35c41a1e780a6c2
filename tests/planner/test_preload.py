"""Loading the next stage's engine beside the running ones (``planner/preload.py``)."""

from __future__ import annotations

import pytest

from samullm_lc.errors import ConfigError, DoesNotFitError
from samullm_lc.graph.paper_apps import chain_summary_app
from samullm_lc.planner import Cluster, evaluate_plan, plan_app
from samullm_lc.planner.gantt import draw_gantt, plan_bars
from samullm_lc.planner.options import option_for
from samullm_lc.planner.plan import ExecutionPlan, Plan


@pytest.fixture(scope="module")
def chain_summary():
    """100 documents summarised chunk by chunk by vicuna-13b, then evaluated by Llama-2-70b (61 s to load)."""
    return chain_summary_app(100, 0), Cluster.parse("8xA100-80GB", "nvswitch")


@pytest.fixture(scope="module")
def planned(chain_summary) -> Plan:
    return plan_app(*chain_summary)


def _preloads(plan: Plan) -> list[tuple[int, ExecutionPlan]]:
    return [(k, e.plan) for k, stage in enumerate(plan.stages) for e in stage.entries if not e.nodes]


def test_the_evaluator_loads_while_the_summariser_runs(chain_summary, planned):
    app, cluster = chain_summary
    plan = planned
    (k, loading), = _preloads(plan)
    assert loading.model == "Llama-2-70b-chat-hf" and loading.memory_fraction < 1.0
    beside = [e.plan for e in plan.stages[k].entries if e.nodes]
    for gpu in loading.gpus:  # the GPUs' memory is split, never over-committed
        assert loading.memory_fraction + sum(p.memory_fraction for p in beside if gpu in p.gpus) <= 1.0 + 1e-9
    following = next(e for e in plan.stages[k + 1].entries if e.plan.model == loading.model)
    assert following.plan == loading and following.load_seconds == 0.0 and following.nodes == ["evaluate"]
    sequential = plan_app(app, cluster, "sequential")
    assert plan.estimated_seconds < 0.8 * sequential.estimated_seconds  # 177 s against 238 s
    assert evaluate_plan(app, cluster, plan) == pytest.approx(plan.estimated_seconds)
    assert Plan.model_validate_json(plan.model_dump_json()) == plan
    assert "(loads for the next stage)" in plan.describe()


def test_the_gantt_chart_shows_the_preloaded_engine_waiting(planned, tmp_path):
    evaluator = next(bar for bar in plan_bars(planned) if bar.plan.model == "Llama-2-70b-chat-hf")
    assert evaluator.start == 0.0 and evaluator.idle_until == planned.stages[0].end_seconds > evaluator.load
    assert draw_gantt(planned, tmp_path / "plan.png").stat().st_size > 0


def test_only_the_search_preloads(chain_summary):
    app, cluster = chain_summary
    for planner in ("greedy", "sequential", "all-at-once"):
        assert _preloads(plan_app(app, cluster, planner)) == []


def test_a_memory_share_is_time_sliced_only_when_the_plan_says_so():
    model = "vicuna-13b-v1.5"
    reduced = option_for(ExecutionPlan(model=model, tp=2, replicas=2, gpus=(0, 1, 2, 3), memory_fraction=0.6))
    assert reduced.memory_fraction == 0.6 and not reduced.time_sliced
    half = option_for(ExecutionPlan(model=model, gpus=(0,), memory_fraction=0.5))
    assert half.memory_fraction == 0.5 and not half.time_sliced  # room for a preloading engine, not slowed
    assert option_for(ExecutionPlan(model=model, gpus=(0,), memory_fraction=0.5, time_sliced=True)).time_sliced
    with pytest.raises(ConfigError, match="one TP1 replica"):
        ExecutionPlan(model=model, replicas=2, gpus=(0, 1), memory_fraction=0.5, time_sliced=True)


def test_a_share_too_small_for_the_model_is_refused(chain_summary, planned):
    app, cluster = chain_summary
    plan = planned.model_copy(deep=True)
    (k, loading), = _preloads(plan)
    entry = next(e for e in plan.stages[k].entries if not e.nodes)
    entry.plan = loading.model_copy(update={"memory_fraction": 0.1})
    with pytest.raises(DoesNotFitError, match="Llama-2-70b-chat-hf"):
        evaluate_plan(app, cluster, plan)
