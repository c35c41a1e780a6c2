"""The per-model-pools baseline (Ray Data LLM's fixed actor pool per model): static engines, idle freed GPUs,
slices in proportion to work, and never ahead of our planner on the paper apps."""

from __future__ import annotations

import pytest

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.errors import DoesNotFitError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.graph.paper_apps import PAPER_APPS
from samullm_lc.planner import Cluster, plan_app
from samullm_lc.planner.baselines import PerModelPoolsPolicy, gpu_seconds_left
from samullm_lc.planner.context import PlanningSettings, build_app_options, build_context
from samullm_lc.planner.stages import initial_state
from tests.planner.conftest import BIG, OTHER_SMALL, SMALL, TINY, make_app

POOLS = "per-model-pools"
EIGHT_GPUS = Cluster.parse("8xA100-80GB")
NOISE = 1.01  # our estimate may exceed the baseline's by this factor (replay noise) and still count as no worse


def _pools(app, cluster: Cluster) -> tuple[PerModelPoolsPolicy, dict]:
    ctx = build_context(app, cluster, build_app_options(app, cluster), PlanningSettings())
    policy = PerModelPoolsPolicy(ctx)
    state = initial_state(ctx)
    return policy, {m: (option, gpu_seconds_left(ctx, state, m)) for m, option in policy.pool_options(state).items()}


def _app(nodes: list[tuple[str, str, int]]) -> AppGraph:
    """Independent nodes of (name, model, requests): 200 tokens in, 120 out."""
    return AppGraph(name="independent", nodes=[
        LLMNode(name=name, model=model, input_tokens=[200] * requests, max_tokens=120,
                output_lengths=OutputLengthDistribution.fixed(120)) for name, model, requests in nodes])


def _uneven_app():
    """A short model, a long one, and a third fed by the short one."""
    return make_app("uneven", [("short", TINY, []), ("long", SMALL, []), ("after", OTHER_SMALL, ["short"])],
                    requests=96, outputs={"long": 600, "short": 40})


def test_every_model_starts_at_once_and_its_engines_never_change():
    plan = plan_app(_uneven_app(), EIGHT_GPUS, POOLS)
    first = {e.plan.model: e.plan for e in plan.stages[0].entries}
    assert set(first) == {TINY, SMALL, OTHER_SMALL}
    assert len(plan.stages) > 1
    for stage in plan.stages[1:]:
        for entry in stage.entries:
            assert entry.plan == first[entry.plan.model]
            assert entry.load_seconds == 0.0
    assert {e.plan.tp for e in plan.stages[0].entries} <= {1, 2, 4, 8}


def test_freed_gpus_stay_idle():
    app = _uneven_app()
    model_of = {node.name: node.model for node in app.nodes}
    plan = plan_app(app, EIGHT_GPUS, POOLS)
    gpus_of = {e.plan.model: set(e.plan.gpus) for e in plan.stages[0].entries}
    done: set[str] = set()
    for stage in plan.stages:
        busy = {model for node, model in model_of.items() if node not in done}
        assert {e.plan.model for e in stage.entries} == busy
        assert {g for e in stage.entries for g in e.plan.gpus} == set().union(*(gpus_of[m] for m in busy))
        done |= {n for e in stage.entries for n in e.finished_nodes}
    assert len(busy) < len(gpus_of)  # the last stage runs fewer pools than the first: the others' GPUs idle


def test_slices_are_in_proportion_to_work():
    app = _app([("a", SMALL, 1200), ("b", OTHER_SMALL, 400)])
    _, pools = _pools(app, EIGHT_GPUS)
    total = sum(work for _, work in pools.values())
    for option, work in pools.values():
        assert abs(option.num_gpus - EIGHT_GPUS.num_gpus * work / total) < 1.0
    assert sum(option.num_gpus for option, _ in pools.values()) == EIGHT_GPUS.num_gpus
    assert pools[SMALL][0].num_gpus > pools[OTHER_SMALL][0].num_gpus


def test_a_slice_too_small_for_one_engine_gets_the_smallest_from_the_largest_slice():
    app = _app([("big", BIG, 8), ("busy", SMALL, 2000)])
    _, pools = _pools(app, Cluster.parse("4xA100-80GB"))
    assert pools[BIG][0].num_gpus == 2 and pools[SMALL][0].num_gpus == 2  # the 70B needs TP2; its share is < 1 GPU


def test_models_share_half_gpus_when_whole_ones_are_too_few_and_fail_clearly_when_even_that_fails():
    app = make_app("crowded", [("a", TINY, []), ("b", SMALL, []), ("c", OTHER_SMALL, [])], requests=32)
    plan = plan_app(app, Cluster.parse("2xA100-80GB"), POOLS)
    shares = sorted(e.plan.memory_fraction for e in plan.stages[0].entries)
    assert shares == [0.5, 0.5, 1.0]
    with pytest.raises(DoesNotFitError, match=r"per-model-pools: the 3 models of 'crowded' need at least 3 GPUs"):
        plan_app(app, Cluster.parse("2xA100-80GB"), POOLS, allow_gpu_sharing=False)
    big = make_app("bigs", [("a", BIG, []), ("b", "Mixtral-8x7B-Instruct-v0.1", [])], requests=8)
    with pytest.raises(DoesNotFitError, match=r"need at least 4 GPUs.*has 2; plan on at least 4 GPUs"):
        plan_app(big, Cluster.parse("2xA100-80GB"), POOLS)


@pytest.mark.parametrize("name", ["ensemble", "router", "chain-summary"])
def test_never_ahead_of_our_planner_on_the_paper_apps(name):
    app = PAPER_APPS[name](200, 0)
    ours = plan_app(app, EIGHT_GPUS).estimated_seconds
    assert ours <= plan_app(app, EIGHT_GPUS, POOLS).estimated_seconds * NOISE


def test_the_mixed_paper_app_does_not_fit_eight_gpus_at_once():
    with pytest.raises(DoesNotFitError, match=r"14 models of 'mixed' need at least 15 GPUs"):
        plan_app(PAPER_APPS["mixed"](100, 0), EIGHT_GPUS, POOLS)
