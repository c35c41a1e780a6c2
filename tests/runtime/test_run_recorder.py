"""The run recorder: per-model counters, engine spans, planning decisions and errors, as a RunReport."""

import logging

from samullm_lc.planner.plan import ExecutionPlan, Plan, Stage, StageEntry
from samullm_lc.runtime.backends.base import EngineSpec
from samullm_lc.runtime.report import RunReport
from samullm_lc.runtime.requests import Completion, GenerationResult
from samullm_lc.runtime.run_recorder import RunRecorder

A, B = "model-a", "model-b"


def _recorder() -> RunRecorder:
    return RunRecorder(backend="fake", cluster="2xA100-80GB", planner="search", models=[A, B])


def _result(prompt: int, output: int) -> GenerationResult:
    return GenerationResult(model=A, completions=[Completion(text="x", num_tokens=output)], prompt_tokens=prompt)


def _plan(seconds: float) -> Plan:
    entry = StageEntry(nodes=["n"], plan=ExecutionPlan(model=A, gpus=(0,)), finished_nodes=["n"])
    return Plan(app="app", cluster="2xA100-80GB", planner="search", estimated_seconds=seconds,
                stages=[Stage(start_seconds=0, end_seconds=seconds, entries=[entry])])


def test_requests_are_counted_per_model_with_their_tokens_and_finish_times():
    recorder = _recorder()
    recorder.expect(A, 3)
    recorder.submitted(A)
    recorder.submitted(A, from_journal=True)
    recorder.done(A, _result(10, 4), now=5.0)
    recorder.done(A, _result(20, 6), now=2.0)
    recorder.submitted(A)
    recorder.failed(A)
    recorder.refused(B)
    recorder.refused("late-model")  # a model the pool took on after it started
    report = recorder.snapshot(now=9.0)
    models = {m.model: m for m in report.models}
    a = models[A]
    assert (a.requests_expected, a.requests_submitted, a.requests_done, a.requests_failed, a.from_journal) == (
        3, 3, 2, 1, 1)
    assert (a.prompt_tokens, a.output_tokens, a.first_finish_seconds, a.last_finish_seconds) == (30, 10, 2.0, 2.0)
    assert [m.model for m in report.models] == [A, B, "late-model"]
    assert (models[B].requests_submitted, models[B].requests_failed) == (1, 1)
    assert report.seconds == 2.0 and report.elapsed_seconds == 9.0 and report.requests_failed == 3


def test_a_snapshot_is_a_copy_that_round_trips():
    recorder = _recorder()
    first = recorder.snapshot(now=1.0)
    recorder.done(A, _result(1, 1), now=3.0)
    assert first.seconds == 0.0 and recorder.snapshot(now=4.0).seconds == 3.0
    assert RunReport.model_validate_json(first.model_dump_json()) == first


def test_plans_record_the_stage_they_start_and_how_long_the_one_before_ran():
    recorder = _recorder()
    assert recorder.last_planning_seconds == 0.0
    recorder.planned(_plan(10.0), now=1.0, reason="start", planning_seconds=0.3, node_models={"n": A})
    recorder.planned(_plan(4.0), now=7.0, reason=f"{A} finished", planning_seconds=0.1, node_models={"n": A})
    recorder.close_stage(9.5)
    recorder.close_stage(12.0)  # closed once
    report = recorder.snapshot(now=12.0)
    assert report.estimated_seconds == 11.0 and report.initial_plan.estimated_seconds == 10.0
    assert {m.model: m.estimated_finish_seconds for m in report.models} == {A: 11.0, B: None}
    assert [(r.reason, r.at_seconds, r.planned_stage_seconds, r.actual_stage_seconds) for r in report.replans] == [
        ("start", 1.0, 10.0, 6.0), (f"{A} finished", 7.0, 4.0, 2.5)]
    assert report.replans[0].stage == [f"{A} TP1 on GPUs [0] for n"]
    assert recorder.last_planning_seconds == 0.1


def test_engines_errors_and_the_journal_are_recorded(caplog):
    recorder = _recorder()
    spec = EngineSpec(engine_id=4, model=A, devices=(0, 1), tp=2, memory_fraction=0.5)
    recorder.engine_span(spec, started=1.0, ready=3.0, stopped=8.0, requests_done=12)
    recorder.engine_failure(8.0, "worker died")
    with caplog.at_level(logging.ERROR):
        recorder.add_error("planning failed: no room")
        recorder.add_error("planning failed: no room")
    for _ in range(3):
        recorder.journal_recomputed("journal row k is unreadable")
    recorder.interrupted()
    report = recorder.snapshot(now=9.0)
    (span,) = report.engines
    assert (span.devices, span.tp, span.memory_fraction, span.ready_seconds, span.requests_done) == ([0, 1], 2, 0.5,
                                                                                                      3.0, 12)
    assert report.engine_failures == ["8.0 s: worker died"]
    assert report.errors[0] == "planning failed: no room" and len(report.errors) == 2
    assert "recomputed" in report.errors[1] and report.journal_recomputed == 3
    assert report.interrupted and not report.ok
    assert [r.message for r in caplog.records].count("planning failed: no room") == 1  # logged once
