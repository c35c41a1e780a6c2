"""What a pool run did, against what the plan said: per model, per re-plan, per engine; JSON round-trip.

``RunReport.summary()`` is the short text; ``RunReport.save_gantt(path)`` draws the actual run with the
planner's Gantt drawing (devices x time, one colour per model), from the engines' real start, ready and
stop times.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from pydantic import BaseModel, Field

from samullm_lc.planner.plan import ExecutionPlan, Plan, Stage, StageEntry
from samullm_lc.user_files import write_private


class ModelRecord(BaseModel):
    """One model's requests and tokens, and when it finished (actual and estimated). The run recorder counts in it
    directly: a pydantic attribute update costs about 0.25 us here, a few per request."""

    model: str
    requests_expected: int = 0
    requests_submitted: int = 0
    requests_done: int = 0
    requests_failed: int = 0
    from_journal: int = Field(0, description="Requests answered from the journal of an earlier run.")
    prompt_tokens: int = 0
    output_tokens: int = 0
    first_finish_seconds: float | None = None
    last_finish_seconds: float | None = None
    estimated_finish_seconds: float | None = Field(None, description="When the initial plan expected its last request.")

    @property
    def finish_error(self) -> float | None:
        """(estimated - actual) / actual finish time of the model's last request."""
        if not self.estimated_finish_seconds or not self.last_finish_seconds:
            return None
        return (self.estimated_finish_seconds - self.last_finish_seconds) / self.last_finish_seconds


class ReplanRecord(BaseModel):
    """One planning decision: when, why, and the stage it started."""

    at_seconds: float
    reason: str
    planning_seconds: float
    estimated_remaining_seconds: float
    stage: list[str] = Field(default_factory=list, description="The engines of the stage it chose, with their nodes.")
    planned_stage_seconds: float | None = Field(None, description="How long the plan expected the stage to run.")
    actual_stage_seconds: float | None = Field(None, description="How long it ran until the next decision.")


class EngineSpan(BaseModel):
    """One engine's life: started, ready after loading, stopped."""

    model: str
    devices: list[int]
    tp: int = 1
    memory_fraction: float = 1.0
    started_seconds: float
    ready_seconds: float | None
    stopped_seconds: float
    requests_done: int = 0


class RunReport(BaseModel):
    """A pool run: plan vs actual per model and end to end, the re-planning decisions, the engines."""

    backend: str
    cluster: str
    planner: str
    seconds: float = Field(0.0, description="Actual end-to-end seconds (last request finished).")
    elapsed_seconds: float = Field(0.0, description="Backend clock when the report was taken.")
    estimated_seconds: float | None = Field(None, description="The initial plan's estimate.")
    initial_plan: Plan | None = None
    models: list[ModelRecord] = Field(default_factory=list)
    replans: list[ReplanRecord] = Field(default_factory=list)
    engines: list[EngineSpan] = Field(default_factory=list)
    engine_failures: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list, description=(
        "Problems of the run as a whole (planning failed, the journal stopped writing), oldest first."))
    journal_recomputed: int = Field(0, description="Requests whose journalled result could not be read: recomputed.")
    interrupted: bool = Field(False, description="The run was stopped (Ctrl-C) before every request finished.")
    call_sites: dict[str, int] = Field(default_factory=dict, description=(
        "Under the LangChain drop-in: calls per call site (client model name and the LangChain step that made "
        "them)."))
    step_batch_sizes: dict[str, dict[int, int]] = Field(default_factory=dict, description=(
        "Real engines: per model, the number of requests in an engine step's batch -> how many steps had it "
        "(complete once the pool is closed: engines report it when they stop)."))
    requests_rejected: int = Field(0, description=(
        "Requests refused at submission: bad input, an unknown model, a pool that was closed or had failed."))

    @property
    def requests_done(self) -> int:
        """Requests answered, over every model."""
        return sum(m.requests_done for m in self.models)

    @property
    def requests_failed(self) -> int:
        """Requests that resolved with an error: refused at submission, or failed in the pool."""
        return self.requests_rejected + sum(m.requests_failed for m in self.models)

    @property
    def ok(self) -> bool:
        """Every request answered and nothing went wrong with the run as a whole."""
        return self.requests_failed == 0 and not self.errors

    @property
    def estimation_error(self) -> float | None:
        """(estimated - actual) / actual end-to-end seconds."""
        if self.estimated_seconds is None or not self.seconds:
            return None
        return (self.estimated_seconds - self.seconds) / self.seconds

    @property
    def output_tokens_per_second(self) -> float:
        """Generated tokens per second over the whole run."""
        return sum(m.output_tokens for m in self.models) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [(f"{self.backend} on {self.cluster} [{self.planner}]: {self.requests_done} requests done, "
                  f"{self.requests_failed} failed, "
                  f"{self.seconds:.1f} s, {self.output_tokens_per_second:,.0f} output tokens/s")]
        if self.estimation_error is not None:
            lines.append(f"  estimated {self.estimated_seconds:.1f} s (error {self.estimation_error:+.1%}); "
                         f"{len(self.replans)} planning decisions, {len(self.engine_failures)} engine failures")
        for m in self.models:
            error = f", finish estimate error {m.finish_error:+.1%}" if m.finish_error is not None else ""
            journal = f", {m.from_journal} from journal" if m.from_journal else ""
            finished = f"{m.last_finish_seconds:.1f} s" if m.last_finish_seconds is not None else "-"
            lines.append(f"  {m.model}: {m.requests_done}/{m.requests_submitted} done{journal}, "
                         f"{m.output_tokens:,} output tokens, last at {finished}{error}")
        for r in self.replans:
            ran = ""
            if r.planned_stage_seconds is not None and r.actual_stage_seconds is not None:
                ran = f" [ran {r.actual_stage_seconds:.1f} s, planned {r.planned_stage_seconds:.1f} s]"
            lines.append(f"  {r.at_seconds:8.1f} s  {r.reason} -> {'; '.join(r.stage) or 'nothing to run'}{ran}")
        if self.requests_rejected:
            lines.append(f"  {self.requests_rejected} requests refused at submission (bad input, or the pool "
                         "was closed or had failed)")
        lines.extend(f"  error: {error}" for error in self.errors)
        return "\n".join(lines)

    def actual_plan(self) -> Plan:
        """The run as it happened, in the planner's Plan form: one stage per interval between engine changes."""
        edges = sorted({s.started_seconds for s in self.engines} | {s.stopped_seconds for s in self.engines})
        stages = []
        for start, end in pairwise(edges):
            entries = [
                StageEntry(
                    nodes=[span.model],
                    plan=ExecutionPlan(model=span.model, tp=span.tp, replicas=1, gpus=tuple(span.devices),
                                       memory_fraction=span.memory_fraction),
                    load_seconds=((span.ready_seconds or span.stopped_seconds) - span.started_seconds
                                  if span.started_seconds == start else 0.0),
                )
                for span in self.engines if span.started_seconds <= start and span.stopped_seconds >= end
            ]
            if entries:
                stages.append(Stage(start_seconds=start, end_seconds=end, entries=entries))
        return Plan(app="actual run", cluster=self.cluster, planner=self.planner, stages=stages,
                    estimated_seconds=self.seconds)

    def save_gantt(self, path: str | Path) -> Path:
        """Draw the actual run (PNG)."""
        from samullm_lc.planner.gantt import draw_gantt  # matplotlib: loaded only when drawing

        return draw_gantt(self.actual_plan(), path)

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON, mode 0600 (it may name prompts' models and errors; see ``write_private``)."""
        return write_private(path, self.model_dump_json(indent=1))


def estimated_finish_seconds(plan: Plan, node_models: dict[str, str]) -> dict[str, float]:
    """Per model, the end of the plan stage in which its last node finishes."""
    finish: dict[str, float] = {}
    for stage in plan.stages:
        for entry in stage.entries:
            for node in entry.finished_nodes:
                model = node_models.get(node, entry.plan.model)
                finish[model] = max(finish.get(model, 0.0), stage.end_seconds)
    return finish
