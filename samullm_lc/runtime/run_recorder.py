"""The run recorder: what the pool's report says, counted as the run goes.

Per-model counters (requests and tokens, first and last finish), one span per engine, one record per planning
decision with the stage it chose and how long that stage actually ran, and the run's errors. ``snapshot``
turns them into a ``RunReport``; each model's counters are its report's ``ModelRecord``, copied when asked for.

Why apart from the driver: the report's bookkeeping is one concern, and the driver's loop should read as
what happens, not as how it is counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from samullm_lc.planner.plan import Plan
from samullm_lc.runtime.backends.base import EngineSpec
from samullm_lc.runtime.report import EngineSpan, ModelRecord, ReplanRecord, RunReport, estimated_finish_seconds
from samullm_lc.runtime.requests import GenerationResult

logger = logging.getLogger("samullm_lc.runtime.driver")  # the driver's logger: messages keep their source


class RunRecorder:
    """Counts a pool run for its ``RunReport`` (written by the driver thread; ``snapshot`` from any thread)."""

    def __init__(self, *, backend: str, cluster: str, planner: str, models: Iterable[str]) -> None:
        self.report = RunReport(backend=backend, cluster=cluster, planner=planner)
        self._models = {m: ModelRecord(model=m) for m in models}

    def counters(self, model: str) -> ModelRecord:
        """The model's counters (made on first use: a model the pool took on after it started)."""
        counters = self._models.get(model)
        if counters is None:
            counters = self._models[model] = ModelRecord(model=model)
        return counters

    # ---- requests ---------------------------------------------------------------------------------------
    def expect(self, model: str, requests: int = 1) -> None:
        """More requests are expected of ``model`` (its app nodes, or one beyond the app graph)."""
        self.counters(model).requests_expected += requests

    def expect_fewer(self, model: str, requests: int) -> None:
        """Fewer requests are expected of ``model``: the client said the rest will not come."""
        self.counters(model).requests_expected -= requests

    def submitted(self, model: str, *, from_journal: bool = False) -> None:
        """A request was taken in (answered from the journal at once with ``from_journal``)."""
        counters = self.counters(model)
        counters.requests_submitted += 1
        if from_journal:
            counters.from_journal += 1

    def refused(self, model: str) -> None:
        """A request that was never taken in failed (counted as submitted and failed)."""
        counters = self.counters(model)
        counters.requests_submitted += 1
        counters.requests_failed += 1

    def done(self, model: str, result: GenerationResult, now: float) -> None:
        """A request of ``model`` finished at backend time ``now`` (seconds)."""
        counters = self.counters(model)
        counters.requests_done += 1
        counters.prompt_tokens += result.prompt_tokens
        counters.output_tokens += result.output_tokens
        counters.first_finish_seconds = min(counters.first_finish_seconds or now, now)
        counters.last_finish_seconds = now

    def failed(self, model: str) -> None:
        """A request of ``model`` failed in the pool."""
        self.counters(model).requests_failed += 1

    # ---- engines ----------------------------------------------------------------------------------------
    def engine_span(self, spec: EngineSpec, *, started: float, ready: float | None, stopped: float,
                    requests_done: int) -> None:
        """An engine's life (backend seconds), recorded when it stops (or when the run ends)."""
        self.report.engines.append(EngineSpan(
            model=spec.model, devices=list(spec.devices), tp=spec.tp, memory_fraction=spec.memory_fraction,
            started_seconds=started, ready_seconds=ready, stopped_seconds=stopped, requests_done=requests_done,
        ))

    def engine_failure(self, now: float, failure: str) -> None:
        """An engine failed at backend time ``now``."""
        self.report.engine_failures.append(f"{now:.1f} s: {failure}")

    # ---- the run as a whole -----------------------------------------------------------------------------
    def add_error(self, message: str) -> None:
        """Record a problem of the run as a whole (once), and log it."""
        if message not in self.report.errors:
            logger.error("%s", message)
            self.report.errors.append(message)

    def journal_recomputed(self, problem: str) -> None:
        """A journalled result could not be read and is recomputed; the first one's ``problem`` is an error."""
        self.report.journal_recomputed += 1
        if self.report.journal_recomputed == 1:  # the first names the cause; the count says how many
            self.add_error(f"{problem}; such requests are recomputed (the report's journal_recomputed counts them)")

    def interrupted(self) -> None:
        """The run was stopped before every request finished."""
        self.report.interrupted = True

    # ---- plans ------------------------------------------------------------------------------------------
    def planned(self, plan: Plan, *, now: float, reason: str, planning_seconds: float,
                node_models: dict[str, str]) -> None:
        """A plan was made at backend time ``now`` for ``reason``: the stage before it ends, its first stage
        begins. The first plan sets the report's estimates (``node_models``: the planned nodes' models)."""
        report = self.report
        if report.estimated_seconds is None:
            report.estimated_seconds = now + plan.estimated_seconds
            report.initial_plan = plan
            for model, finish in estimated_finish_seconds(plan, node_models).items():
                self.counters(model).estimated_finish_seconds = now + finish
        stage = plan.stages[0] if plan.stages else None
        self.close_stage(now)
        report.replans.append(ReplanRecord(
            at_seconds=now, reason=reason, planning_seconds=planning_seconds,
            estimated_remaining_seconds=plan.estimated_seconds,
            stage=[entry.plan.short() + " for " + ", ".join(entry.nodes) for entry in stage.entries] if stage else [],
            planned_stage_seconds=None if stage is None else stage.end_seconds - stage.start_seconds,
        ))

    def close_stage(self, now: float) -> None:
        """The stage that ran until ``now`` gets its actual length."""
        replans = self.report.replans
        if replans and replans[-1].actual_stage_seconds is None:
            replans[-1].actual_stage_seconds = max(0.0, now - replans[-1].at_seconds)

    @property
    def last_planning_seconds(self) -> float:
        """How long the last planning took (0 before the first)."""
        return self.report.replans[-1].planning_seconds if self.report.replans else 0.0

    def snapshot(self, now: float) -> RunReport:
        """The report so far, at backend time ``now`` (a copy: the recorder's own goes on changing)."""
        self.report.models = [c.model_copy() for c in self._models.values()]
        self.report.seconds = max((c.last_finish_seconds or 0.0 for c in self._models.values()), default=0.0)
        self.report.elapsed_seconds = now
        return self.report.model_copy()


__all__ = ["RunRecorder"]
