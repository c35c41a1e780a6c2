"""The planner's parts on their own: placement, the cluster's TP blocks, curves, the stage model."""

from __future__ import annotations

import numpy as np
import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.planner import Cluster
from samullm_lc.planner.context import PlanningSettings, build_app_options, build_context
from samullm_lc.planner.curves import EngineCurve
from samullm_lc.planner.options import EngineOption
from samullm_lc.planner.placement import Assignment, place
from samullm_lc.planner.stages import initial_state, run_stage, stage_nodes
from tests.planner.conftest import OTHER_SMALL, SMALL, TINY, make_app


def test_tp_blocks_are_aligned_and_stay_inside_nodes():
    assert Cluster.parse("8xA100-80GB").tp_groups(4) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert Cluster.parse("6xA100-80GB").tp_groups(4) == [(0, 1, 2, 3)]
    assert Cluster.parse("12xA100-80GB").tp_groups(4) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)]
    assert Cluster.parse("3xcpu").tp_degrees() == [1]
    with pytest.raises(ConfigError, match="tensor-parallel degree 16"):
        Cluster.parse("8xA100-80GB").tp_groups(16)


def test_placement_packs_largest_first_and_keeps_running_engines():
    cluster = Cluster.parse("8xA100-80GB")
    group = place([("a", EngineOption(1)), ("b", EngineOption(4)), ("c", EngineOption(2))], cluster, {})
    gpus = {a.model: a.gpus for a in group}
    assert gpus["b"] in cluster.tp_groups(4) and gpus["c"] in cluster.tp_groups(2)
    assert len({g for a in group for g in a.gpus}) == 7
    kept = {"a": Assignment("a", EngineOption(1), (7,))}
    again = place([("a", EngineOption(1)), ("d", EngineOption(4))], cluster, kept)
    assert {x.model: x.gpus for x in again}["a"] == (7,)


def test_placement_pairs_time_sliced_engines_and_refuses_overflow():
    cluster = Cluster.parse("2xA100-80GB")
    shared = EngineOption(1, 1, time_sliced=True)
    group = place([("a", shared), ("b", shared), ("c", EngineOption(1))], cluster, {})
    gpus = {a.model: a.gpus for a in group}
    assert gpus["a"] == gpus["b"] != gpus["c"]
    assert place([("a", EngineOption(2)), ("b", shared)], cluster, {}) is None


def test_placement_moves_kept_engines_when_they_fragment_the_gpus():
    cluster = Cluster.parse("4xA100-80GB")
    kept = {"a": Assignment("a", EngineOption(1), (1,)), "c": Assignment("c", EngineOption(1), (2,))}
    group = place([("a", EngineOption(1)), ("b", EngineOption(2)), ("c", EngineOption(1))], cluster, kept)
    gpus = {x.model: x.gpus for x in group}
    assert gpus["b"] in cluster.tp_groups(2)
    assert gpus["a"] != (1,) or gpus["c"] != (2,)


def test_curve_progress_is_consistent_with_remaining_time():
    curve = EngineCurve(option=EngineOption(1), rate=1000.0, tail=10.0, standalone_seconds=110.0, load_seconds=5.0)
    assert curve.remaining_seconds(100_000) == pytest.approx(110.0)
    assert curve.remaining_seconds(100_000, fresh=True) == pytest.approx(110.0)
    assert curve.remaining_seconds(2_000, fresh=True) == pytest.approx(12.0)
    assert curve.remaining_seconds(2_000) == pytest.approx(4.0)
    left = curve.tokens_left(100_000, 50.0)
    assert curve.remaining_seconds(left) == pytest.approx(60.0)
    assert curve.tokens_left(100_000, 200.0) == 0.0


def test_stage_nodes_follow_dependencies_and_avoid_engine_cycles():
    app = make_app("loop", [("x1", SMALL, []), ("y", TINY, ["x1"]), ("x2", SMALL, ["y"])], requests=8)
    cluster = Cluster.parse("2xA100-80GB")
    ctx = build_context(app, cluster, build_app_options(app, cluster), PlanningSettings())
    unfinished = np.ones(3, dtype=bool)
    assert stage_nodes(ctx, unfinished, {SMALL}) == [0]
    assert stage_nodes(ctx, unfinished, {SMALL, TINY}) == [0, 1]
    assert stage_nodes(ctx, np.array([False, True, True]), {SMALL, TINY}) == [1, 2]


def test_stage_model_ends_at_the_first_finish():
    app = make_app("pair", [("a", SMALL, []), ("b", OTHER_SMALL, [])], requests=32, outputs={"b": 600})
    cluster = Cluster.parse("2xA100-80GB")
    ctx = build_context(app, cluster, build_app_options(app, cluster), PlanningSettings())
    group = place([(SMALL, EngineOption(1)), (OTHER_SMALL, EngineOption(1))], cluster, {})
    outcome = run_stage(ctx, initial_state(ctx), group)
    assert outcome.finished == [0]
    assert 0 < outcome.state.remaining[1] < ctx.total_tokens[1]
    assert outcome.throughput > 0 and outcome.loads[SMALL] > 0
