"""Live progress of a pool run on the terminal (rich): per model done/total and tokens/s; overall, the time so far
and what the latest plan says is left.

Quiet when stdout is not a terminal (CI logs, pipes) unless asked for; the run report has the same
figures afterwards.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from samullm_lc.runtime.report import RunReport


class ProgressDisplay:
    """One bar per model plus an overall line with the ETA against the plan."""

    def __init__(self, models: list[str], *, enabled: bool | None = None, console: Console | None = None) -> None:
        console = console or Console()
        self.enabled = console.is_terminal if enabled is None else enabled
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            console=console, disable=not self.enabled, transient=False,
        )
        self._tasks: dict[str, TaskID] = {m: self._progress.add_task(m, total=None, info="") for m in models}
        self._overall = self._progress.add_task("all", total=None, info="")

    def add_model(self, model: str) -> None:
        """A bar for a model the pool took on after it started."""
        if model not in self._tasks:
            self._tasks[model] = self._progress.add_task(model, total=None, info="")

    def start(self) -> None:
        if self.enabled:
            self._progress.start()

    def stop(self) -> None:
        if self.enabled:
            self._progress.stop()

    def update(self, report: RunReport) -> None:
        """Redraw from the driver's report snapshot; rates and times are on the backend's clock (virtual on
        ``sim``)."""
        if not self.enabled:
            return
        elapsed = max(report.elapsed_seconds, 1e-9)
        for record in report.models:
            task = self._tasks.get(record.model)
            if task is None:
                continue
            done = record.requests_done + record.requests_failed
            self._progress.update(task, completed=done, total=max(record.requests_expected, done) or None,
                                  info=f"{record.output_tokens / elapsed:,.0f} tok/s")
        total = sum(max(r.requests_expected, r.requests_done) for r in report.models)
        done = sum(r.requests_done + r.requests_failed for r in report.models)
        last = report.replans[-1] if report.replans else None
        left = f", plan: {max(last.at_seconds + last.estimated_remaining_seconds - elapsed, 0):,.0f} s left" if last else ""
        self._progress.update(self._overall, completed=done, total=total or None, info=f"{elapsed:,.0f} s{left}")
