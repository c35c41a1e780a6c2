"""The simulator's step-time ledger: when every step ended, and the steps still to be priced.

This is the pricing side of the simulator (Vidur's "how long does this batch take"): the scheduling
(``continuous_batching``) decides each step and hands its shape here, priced at once while the clock
matters, or deferred and priced with every other deferred step in one vectorised latency-model call.
"""

from __future__ import annotations

import numpy as np

from samullm_lc.costmodel.latency.base import IterationLatencyModel


class StepTimes:
    """End time of every step, and the steps scheduled while the clock did not matter, awaiting pricing.

    ``_ends[s]`` is when step ``s`` ended (``_ends[0]`` is ``nan``: "never"). An unpriced row is
    ``(steps, prefill_tokens, prefill_seqs, decode_seqs, decode_context, prefill_attention_pairs,
    gap_seconds)`` for a run of ``steps`` steps whose decode context grows by ``decode_seqs`` per step,
    after ``gap_seconds`` in which no step ran (requests being admitted).
    """

    def __init__(self) -> None:
        self._ends = np.full(1024, np.nan)
        self.priced = 0  # steps whose end time is known
        self.unpriced: list[tuple[int, int, int, int, int, float, float]] = []
        self.gap = 0.0  # seconds passing after the unpriced steps so far, before the next one

    def copy(self) -> StepTimes:
        """An independent copy (the unpriced rows are tuples, so a shallow list copy will do)."""
        clone = StepTimes.__new__(StepTimes)
        clone._ends, clone.priced, clone.unpriced, clone.gap = self._ends.copy(), self.priced, self.unpriced.copy(), self.gap
        return clone

    def record(self, end: float) -> None:
        """Append the end time of one step."""
        if self.priced + 1 >= self._ends.size:
            self._grow(self.priced + 2)
        self.priced += 1
        self._ends[self.priced] = end

    def record_many(self, ends: np.ndarray) -> None:
        """Append the end times of consecutive steps."""
        self._grow(self.priced + 1 + ends.size)
        self._ends[self.priced + 1 : self.priced + 1 + ends.size] = ends
        self.priced += ends.size

    def defer(self, row: tuple[int, int, int, int, int, float]) -> None:
        """Queue a run of steps for pricing later."""
        self.unpriced.append((*row, self.gap))
        self.gap = 0.0

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass after the unpriced steps so far, before the next step."""
        self.gap += seconds

    def at(self, steps: np.ndarray) -> np.ndarray:
        """End times of the given step numbers (``nan`` for step 0)."""
        return self._ends[steps]

    def price_unpriced(self, latency: IterationLatencyModel, now: float) -> float:
        """Price the unpriced steps in one latency-model call; returns the end of the last one."""
        if not self.unpriced:
            return now
        rows = np.array(self.unpriced, dtype=np.float64)
        self.unpriced = []
        counts = rows[:, 0].astype(np.int64)
        first = np.cumsum(counts) - counts  # where each row's first step lands among all the steps
        gaps = rows[:, 6]
        if counts.max() > 1:
            within = np.arange(int(counts.sum())) - np.repeat(first, counts)
            rows = np.repeat(rows, counts, axis=0)
            rows[:, 4] += rows[:, 3] * within
        integer = rows[:, 1:4].astype(np.int64)
        seconds = latency.step_seconds(integer[:, 0], integer[:, 1], integer[:, 2], rows[:, 4], rows[:, 5])
        seconds = np.broadcast_to(np.asarray(seconds, dtype=np.float64), (rows.shape[0],))
        waited = np.flatnonzero(gaps)  # rows after which requests were admitted: that time passes first
        seconds = np.insert(seconds, first[waited], gaps[waited])
        times = np.cumsum(np.concatenate(([now], seconds)))[1:]  # sequential sums, as stepping one by one
        ends = np.delete(times, first[waited] + np.arange(waited.size))
        self.record_many(ends)
        return float(ends[-1])

    def _grow(self, size: int) -> None:
        """Make room for ``size`` entries."""
        if size > self._ends.size:
            grown = np.full(max(size, 2 * self._ends.size), np.nan)
            grown[: self._ends.size] = self._ends
            self._ends = grown

