"""Re-planning from a partly finished run plans only what is left."""

from __future__ import annotations

import pytest

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.errors import ConfigError
from samullm_lc.planner import Cluster, ExecutionPlan, RunState, plan_app, replan
from tests.planner.conftest import OTHER_SMALL, SMALL

TWO_GPUS = Cluster.parse("2xA100-80GB")


def test_replan_after_upstream_finished_plans_only_the_rest(chain_app):
    full = plan_app(chain_app, TWO_GPUS)
    state = RunState(finished={"first": list(range(64))}, output_tokens={"first": {i: 120 for i in range(64)}})
    rest = replan(chain_app, TWO_GPUS, state)
    planned = {n for s in rest.stages for e in s.entries for n in e.nodes}
    assert planned == {"second"}
    assert rest.estimated_seconds < full.estimated_seconds


def test_replan_keeps_a_running_engine_without_reload(two_independent):
    running = ExecutionPlan(model=SMALL, tp=1, gpus=(0,))
    state = RunState(finished={"a": list(range(32))}, engines={SMALL: running})
    plan = replan(two_independent, TWO_GPUS, state, "all-at-once")
    entry = next(e for e in plan.stages[0].entries if e.plan.model == SMALL)
    assert entry.plan == running and entry.load_seconds == 0.0
    assert entry.requests_done["a"] >= 32


def test_replan_uses_refined_lengths_and_measured_loads(two_independent):
    base = replan(two_independent, TWO_GPUS, RunState())
    state = RunState(
        output_lengths={SMALL: OutputLengthDistribution.fixed(10), OTHER_SMALL: OutputLengthDistribution.fixed(10)},
        load_seconds={SMALL: {1: 1.0, 2: 1.0}, OTHER_SMALL: {1: 1.0, 2: 1.0}},
    )
    faster = replan(two_independent.model_copy(update={"nodes": [
        n.model_copy(update={"output_lengths": None}) for n in two_independent.nodes]}), TWO_GPUS, state)
    assert faster.estimated_seconds < base.estimated_seconds
    assert all(e.load_seconds in (0.0, 1.0) for s in faster.stages for e in s.entries)


def test_run_state_round_trips_and_is_checked(two_independent):
    state = RunState(finished={"a": [1, 2]}, engines={SMALL: ExecutionPlan(model=SMALL, gpus=(1,))})
    assert RunState.model_validate_json(state.model_dump_json()) == state
    with pytest.raises(ConfigError, match="no node 'zz'"):
        replan(two_independent, TWO_GPUS, RunState(finished={"zz": [0]}))
    with pytest.raises(ConfigError, match="out of range"):
        replan(two_independent, TWO_GPUS, RunState(finished={"a": [999]}))
