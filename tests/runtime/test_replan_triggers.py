"""Re-plan triggers: the first names the re-plan, a plan clears them, a stage running long raises one."""

import pytest

from samullm_lc.runtime.replan_triggers import ReplanReason, ReplanTrigger, ReplanTriggers


def test_the_first_trigger_names_the_replan_and_taking_it_clears_them():
    triggers = ReplanTriggers(threshold=0.25, min_replan_seconds=2.0)
    assert triggers.pending is None and triggers.take([]) is None
    triggers.add(ReplanTrigger.model_finished("a"))
    triggers.add(ReplanTrigger.engine_failed(3, "b", "crash"))
    assert triggers.pending.detail == "a finished"
    assert [t.reason for t in triggers.raised] == [ReplanReason.MODEL_FINISHED, ReplanReason.ENGINE_FAILED]
    assert triggers.take(["a"]).reason is ReplanReason.MODEL_FINISHED
    assert triggers.pending is None and triggers.raised == []


def test_models_queued_when_a_plan_was_made_are_not_unplanned():
    triggers = ReplanTriggers(threshold=0.25, min_replan_seconds=2.0)
    assert triggers.unplanned("a")
    triggers.take(["a"])
    assert not triggers.unplanned("a") and triggers.unplanned("b")


@pytest.mark.parametrize(("planned", "last_planning", "quiet_until"), [
    (10.0, 0.0, 12.5),  # 25 % over the stage
    (1.0, 0.0, 2.5),  # short stages: at least min_replan_seconds
    (1.0, 0.5, 6.25),  # ten planning times
])
def test_a_stage_overruns_past_its_threshold_once(planned, last_planning, quiet_until):
    triggers = ReplanTriggers(threshold=0.25, min_replan_seconds=2.0)
    triggers.stage_started(100.0, planned)
    triggers.check_overrun(100.0 + quiet_until - 1e-6, last_planning)
    assert triggers.pending is None
    triggers.check_overrun(100.0 + quiet_until + 1e-6, last_planning)
    assert triggers.pending.reason is ReplanReason.STAGE_OVERRUN
    assert triggers.pending.detail.startswith("stage ran ")
    assert f"against {planned:.1f} s planned (more than 25% over)" in triggers.pending.detail
    triggers.take([])
    triggers.check_overrun(1e9, last_planning)
    assert triggers.pending is None  # the same stage does not raise it twice


def test_no_stage_or_a_pending_trigger_means_no_overrun():
    triggers = ReplanTriggers(threshold=0.25, min_replan_seconds=2.0)
    triggers.check_overrun(1e9, 0.0)
    assert triggers.pending is None
    triggers.stage_started(0.0, 1.0)
    triggers.add(ReplanTrigger.start())
    triggers.check_overrun(1e9, 0.0)
    assert [t.reason for t in triggers.raised] == [ReplanReason.START]


def test_each_trigger_says_why_in_the_words_of_the_report():
    assert ReplanTrigger.start().detail == "start"
    assert ReplanTrigger.beyond_app("m").detail == "requests beyond the app graph arrived for m, which no engine runs"
    assert ReplanTrigger.engine_failed(2, "m", "oom").detail == "engine 2 (m) failed: oom"
    assert ReplanTrigger.model_given_up("abandoned").reason is ReplanReason.MODEL_GIVEN_UP
