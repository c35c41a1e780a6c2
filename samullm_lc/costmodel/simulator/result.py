"""What a simulation reports: where the engine stands (``SimulationResult``) and its step trace."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from samullm_lc.costmodel.simulator.step_times import StepTimes

TRACE_FIELDS = ("start_seconds", "seconds", "num_steps", "prefill_tokens", "decode_seqs", "num_running", "num_waiting")


@dataclass(slots=True)
class SimulationResult:
    """Where the simulated engine stands after ``run``.

    Times are seconds since the simulator's clock started. Arrays are indexed by request id (the order
    requests were added); unfinished requests have ``nan`` finish times.
    """

    now_seconds: float
    finished: bool
    finish_seconds: np.ndarray
    first_token_seconds: np.ndarray
    output_tokens: np.ndarray
    num_steps: int
    num_preemptions: int
    trace: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        """Time the last request finished, or the clock if some are unfinished."""
        done = self.finish_seconds[~np.isnan(self.finish_seconds)]
        return float(done.max()) if self.finished and done.size else self.now_seconds

    @property
    def num_finished(self) -> int:
        """Requests that have finished."""
        return int(np.count_nonzero(~np.isnan(self.finish_seconds)))


class StepTrace:
    """One row per step or decode stretch, kept when the simulator records a trace.

    A row is ``[start, seconds, first step, steps, prefill tokens, decode seqs, running, waiting, seconds
    deferred before the first step]``; start and seconds are ``nan`` until the steps are priced, and are
    then read from the step end times.
    """

    def __init__(self) -> None:
        self.rows: list[list[float]] = []

    def copy(self) -> StepTrace:
        """An independent copy."""
        clone = StepTrace()
        clone.rows = [row.copy() for row in self.rows]
        return clone

    def add(self, start: float, seconds: float, first_step: int, steps: int, prefill_tokens: int, decode_seqs: int,
            running: int, waiting: int, deferred_seconds: float) -> None:
        """Add a row for ``steps`` steps from ``first_step``; ``nan`` start or seconds are filled in once priced
        (``deferred_seconds``: admission seconds deferred before its first step, to place its start)."""
        self.rows.append([start, seconds, first_step, steps, prefill_tokens, decode_seqs, running, waiting,
                          deferred_seconds])

    def arrays(self, times: StepTimes) -> dict[str, np.ndarray]:
        """The trace as named columns, start and seconds of unpriced rows read from the step end times."""
        rows = np.asarray(self.rows, dtype=np.float64).reshape(-1, 9)
        first, steps = rows[:, 2].astype(np.int64), rows[:, 3].astype(np.int64)
        start = np.where(np.isnan(rows[:, 0]), times.at(first - 1) + rows[:, 8], rows[:, 0])
        seconds = np.where(np.isnan(rows[:, 1]), times.at(first + steps - 1) - start, rows[:, 1])
        columns = (start, seconds, rows[:, 3], rows[:, 4], rows[:, 5], rows[:, 6], rows[:, 7])
        return dict(zip(TRACE_FIELDS, columns, strict=True))
