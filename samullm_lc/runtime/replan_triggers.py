"""Why the pool's driver re-plans: the triggers, and the stage clock that notices a stage running long.

The driver re-plans, with the planner's ``replan`` on what it observed, when

- the run starts, or its first requests arrive (``START``), unless the pool was given a plan: then that plan's
  first stage starts at once (``PLAN_GIVEN`` names it in the report; no planning),
- a model finishes its share of the app, the plan's stage boundary (``MODEL_FINISHED``),
- work arrives for a model no engine runs, requests beyond the app graph (``BEYOND_APP``),
- the stage runs longer than planned by more than ``replan_threshold`` (``STAGE_OVERRUN``),
- an engine fails and is to be restarted or re-planned elsewhere (``ENGINE_FAILED``),
- a node leaves the cluster: the plan is made again on the devices left (``DEVICES_LOST``),
- a model is given up after its engines kept failing (``MODEL_GIVEN_UP``),
- the client says no more requests come and some node expected more than it got (``INTAKE_FINISHED``): a traced
  graph over-estimated its calls, so the plan still waits for them and keeps engines for them.

Several triggers may fire between two plans; the first names the re-plan in the report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class ReplanReason(Enum):
    """What made the driver re-plan."""

    START = "start"
    MODEL_FINISHED = "model finished"
    BEYOND_APP = "requests beyond the app graph"
    STAGE_OVERRUN = "stage overran"
    ENGINE_FAILED = "engine failed"
    DEVICES_LOST = "devices lost"
    MODEL_GIVEN_UP = "model given up"
    PLAN_GIVEN = "plan given"
    INTAKE_FINISHED = "intake finished"
    EXPECTATIONS = "fewer requests expected"


@dataclass(frozen=True, slots=True)
class ReplanTrigger:
    """One reason to re-plan, with the words the report's ``ReplanRecord.reason`` records."""

    reason: ReplanReason
    detail: str

    @classmethod
    def start(cls) -> ReplanTrigger:
        return cls(ReplanReason.START, "start")

    @classmethod
    def model_finished(cls, model: str) -> ReplanTrigger:
        return cls(ReplanReason.MODEL_FINISHED, f"{model} finished")

    @classmethod
    def beyond_app(cls, model: str) -> ReplanTrigger:
        return cls(ReplanReason.BEYOND_APP, f"requests beyond the app graph arrived for {model}, which no engine runs")

    @classmethod
    def stage_overrun(cls, elapsed_seconds: float, planned_seconds: float, threshold: float) -> ReplanTrigger:
        return cls(ReplanReason.STAGE_OVERRUN, f"stage ran {elapsed_seconds:.1f} s against {planned_seconds:.1f} s "
                                               f"planned (more than {threshold:.0%} over)")

    @classmethod
    def engine_failed(cls, engine_id: int, model: str, failure: str) -> ReplanTrigger:
        return cls(ReplanReason.ENGINE_FAILED, f"engine {engine_id} ({model}) failed: {failure}")

    @classmethod
    def devices_lost(cls, reason: str) -> ReplanTrigger:
        return cls(ReplanReason.DEVICES_LOST, reason)

    @classmethod
    def expectations(cls, nodes: list[str], models: list[str]) -> ReplanTrigger:
        done = [*(f"node {n}" for n in nodes), *(f"model {m}" for m in models)]
        return cls(ReplanReason.EXPECTATIONS, f"the client expects fewer requests: {', '.join(done)} finished")

    @classmethod
    def model_given_up(cls, message: str) -> ReplanTrigger:
        return cls(ReplanReason.MODEL_GIVEN_UP, message)

    @classmethod
    def plan_given(cls) -> ReplanTrigger:
        return cls(ReplanReason.PLAN_GIVEN, "plan given to the pool")

    @classmethod
    def intake_finished(cls, not_coming: int) -> ReplanTrigger:
        return cls(ReplanReason.INTAKE_FINISHED, f"intake finished: {not_coming} request(s) the app graph expected "
                                                 "will not come")


class ReplanTriggers:
    """The triggers raised since the last plan, and the clock of the stage that plan started.

    A stage overruns when it has run more than ``1 + threshold`` times its planned length, or times
    ``min_replan_seconds`` and ten planning times if those are longer: a plan of short stages must not spend the
    run re-planning.
    """

    __slots__ = ("_raised", "_seen_by_plan", "_stage_seconds", "_stage_started", "min_replan_seconds", "threshold")

    def __init__(self, *, threshold: float, min_replan_seconds: float) -> None:
        self.threshold = threshold
        self.min_replan_seconds = min_replan_seconds
        self._raised: list[ReplanTrigger] = []
        self._seen_by_plan: frozenset[str] = frozenset()
        self._stage_started = 0.0
        self._stage_seconds = math.inf  # the running stage's planned length; inf: nothing to watch

    @property
    def pending(self) -> ReplanTrigger | None:
        """The first trigger raised since the last plan (it names the re-plan), or None."""
        return self._raised[0] if self._raised else None

    @property
    def raised(self) -> list[ReplanTrigger]:
        """Every trigger raised since the last plan, first first."""
        return list(self._raised)

    def add(self, trigger: ReplanTrigger) -> None:
        """Ask for a re-plan."""
        self._raised.append(trigger)

    def take(self, queued_models: Iterable[str]) -> ReplanTrigger | None:
        """A plan is being made now: return the trigger that names it and clear them all. ``queued_models`` had
        requests waiting: a plan that leaves one without an engine chose to, so more of its requests arriving
        do not re-plan again (``unplanned``)."""
        first = self.pending
        self._raised.clear()
        self._seen_by_plan = frozenset(queued_models)
        return first

    def unplanned(self, model: str) -> bool:
        """Whether ``model`` had no requests waiting when the last plan was made."""
        return model not in self._seen_by_plan

    def stage_started(self, now: float, planned_seconds: float) -> None:
        """A plan's first stage starts at backend time ``now`` and is planned to run ``planned_seconds``
        (inf: no stage)."""
        self._stage_started = now
        self._stage_seconds = planned_seconds

    def check_overrun(self, now: float, last_planning_seconds: float) -> None:
        """Raise ``STAGE_OVERRUN`` (once per stage) if the stage has run too long by backend time ``now``."""
        if self._raised or not math.isfinite(self._stage_seconds):
            return
        elapsed = now - self._stage_started
        patience = max(self._stage_seconds, self.min_replan_seconds, 10 * last_planning_seconds)
        if elapsed > (1 + self.threshold) * patience:
            self.add(ReplanTrigger.stage_overrun(elapsed, self._stage_seconds, self.threshold))
            self._stage_seconds = math.inf


__all__ = ["ReplanReason", "ReplanTrigger", "ReplanTriggers"]
