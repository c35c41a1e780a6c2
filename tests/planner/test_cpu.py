"""Planning on the CPU engine's slots, with measured profiles standing in for the analytic model."""

from __future__ import annotations

import pytest

from samullm_lc.costmodel.architecture import resolve_architecture
from samullm_lc.costmodel.latency.linear import FitQuality, LinearLatencyModel
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.errors import ConfigError, ProfileError
from samullm_lc.planner import Cluster, RunState, evaluate_plan, plan_app, replan
from samullm_lc.planner.options import EngineOption, build_model_options
from samullm_lc.runtime.planning import check_given_plan
from tests.planner.conftest import make_app


def _profile(name: str, seconds_per_step: float) -> EngineProfile:
    return EngineProfile(
        model=name,
        architecture=resolve_architecture("phi-2").model_copy(update={"name": name}),
        hardware="cpu",
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=2048, num_kv_blocks=512,
                                  max_model_len=1024),
        latency=LinearLatencyModel(intercept_seconds=seconds_per_step,
                                   coefficients={"prefill_tokens": 2e-5, "decode_seqs": 1e-3}),
        fit=FitQuality(num_steps=100, r2=0.99, median_relative_error=0.02, total_relative_error=0.0),
        load_seconds=4.0,
    )


def test_plans_on_cpu_slots_with_profiles():
    app = make_app("cpu", [("a", "tiny-a", []), ("b", "tiny-b", ["a"])], requests=24, prompt=50, output=30)
    cluster = Cluster.parse("2xcpu")
    profiles = {"tiny-a": _profile("tiny-a", 0.02), "tiny-b": _profile("tiny-b", 0.03)}
    plan = plan_app(app, cluster, profiles=profiles)
    assert all(e.plan.tp == 1 and e.plan.memory_fraction == 1.0 for s in plan.stages for e in s.entries)
    assert evaluate_plan(app, cluster, plan, profiles=profiles) == pytest.approx(plan.estimated_seconds)
    assert plan.cluster == "2xcpu"  # CPU cores have no topology to name
    check_given_plan(plan.model_copy(update={"cluster": "2xcpu (pcie)"}), app, cluster)  # a plan file of before
    with pytest.raises(ConfigError, match="was made for cluster 4xcpu"):
        check_given_plan(plan.model_copy(update={"cluster": "4xcpu"}), app, cluster)


def test_cpu_without_profile_asks_for_one():
    app = make_app("cpu", [("a", "tiny-a", [])], requests=4)
    with pytest.raises(ProfileError, match="samullm profile"):
        plan_app(app, Cluster.parse("1xcpu"))


def test_only_the_first_stage_of_a_fresh_plan_pays_the_process_start():
    # One slot, b reads a: a's engine starts a worker process (import 10 s + load 4 s); b's engine reuses the
    # process a's engine leaves, and a re-plan of a running pool reuses processes for every engine.
    app = make_app("cpu", [("a", "tiny-a", []), ("b", "tiny-b", ["a"])], requests=24, prompt=50, output=30)
    cluster = Cluster.parse("1xcpu")
    profiles = {m: _profile(m, 0.02).model_copy(update={"process_start_seconds": 10.0}) for m in ("tiny-a", "tiny-b")}
    plan = plan_app(app, cluster, profiles=profiles)
    loads = [(e.plan.model, e.load_seconds) for s in plan.stages for e in s.entries if e.load_seconds]
    assert loads == [("tiny-a", pytest.approx(14.0)), ("tiny-b", pytest.approx(4.0))]
    without = plan_app(app, cluster, profiles={m: _profile(m, 0.02) for m in profiles})
    assert plan.estimated_seconds == pytest.approx(without.estimated_seconds + 10.0)
    assert evaluate_plan(app, cluster, plan, profiles=profiles) == pytest.approx(plan.estimated_seconds)
    again = replan(app, cluster, RunState(), profiles=profiles)
    assert [e.load_seconds for s in again.stages for e in s.entries if e.load_seconds] == [pytest.approx(4.0)] * 2


def test_a_gpu_profile_load_includes_its_process_start():
    # GPU load times include the start-up (the analytic ones are calibrated that way), so a profiled one does too.
    profile = _profile("phi-2", 0.02).model_copy(update={"hardware": "A100-80GB", "process_start_seconds": 6.0})
    options = build_model_options("phi-2", Cluster.parse("1xA100-80GB"), profile=profile)
    assert options.load(EngineOption(tp=1)) == pytest.approx(10.0)
    assert options.process_start_seconds == 0.0
