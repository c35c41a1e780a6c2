"""The simulator's decode mode: steps and decode stretches while every running request decodes.

A decoding request gains one computed token per step, so a step changes no per-request state: the running
requests sit in a ``DecodeBatch`` and a step is scheduled on Python scalars. Decode-only stretches in which
no request can finish, arrive or be admitted run as one unit (priced at once while the clock matters,
otherwise deferred). Admitting a request whose prompt gets only a chunk switches back to the general form.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

from samullm_lc.costmodel.latency.base import IterationLatencyModel
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.costmodel.simulator.decode_batch import DecodeBatch, plan_whole_admissions
from samullm_lc.costmodel.simulator.general_form import COMPUTED, END, ID, PROMPT, TOKENS, slot_matrix
from samullm_lc.costmodel.simulator.step_times import StepTimes
from samullm_lc.errors import SamullmError


class DecodeMode:
    """The decode-mode half of ``ContinuousBatchingSimulator``, which holds the state below and provides
    ``_step`` (one general-form step), ``_take_step`` (price a step), ``_trace_steps`` and
    ``_release_followers``."""

    config: SchedulerConfig
    latency: IterationLatencyModel
    record_trace: bool
    now: float
    num_steps: int
    num_preemptions: int
    num_finished: int
    _prompt: np.ndarray
    _end_tokens: np.ndarray
    _num_tokens: np.ndarray
    _finish_step: np.ndarray
    _first_token_step: np.ndarray
    _slots: np.ndarray
    _batch: DecodeBatch | None
    _waiting: deque[int]
    _pending: list[tuple[float, int]]
    _free_blocks: int
    _watermark_blocks: int
    _times: StepTimes
    _clocked: bool

    def _step(self, horizon: float) -> bool: ...
    def _take_step(self, features: tuple[int, int, int, int, float], horizon: float, running: int) -> bool: ...
    def _trace_steps(self, start: float, seconds: float, steps: int, prefill_tokens: int, decode_seqs: int,
                     running: int) -> None: ...
    def _release_followers(self, finished: Iterable[int]) -> None: ...

    def _all_decoding(self) -> bool:
        """True when every running request decodes and all fit in one step's token budget."""
        slots = self._slots
        if slots.shape[1] > self.config.max_num_batched_tokens:
            return False
        return not slots.shape[1] or bool(((slots[TOKENS] - slots[COMPUTED]) == 1).all())

    def _enter_decode_mode(self) -> None:
        """Move the running requests from the slot matrix into a ``DecodeBatch``."""
        slots, step = self._slots, self.num_steps
        batch = DecodeBatch(self.config.block_size)
        for request, offset, end in zip(
            slots[ID].tolist(), (slots[COMPUTED] - step).tolist(), slots[END].tolist(), strict=True
        ):
            batch.add(request, offset, end)
        batch.first_tokens_due = slots[ID, slots[TOKENS] == slots[PROMPT]].tolist()
        self._batch = batch
        self._slots = np.zeros((6, 0), np.int64)

    def _leave_decode_mode(self) -> None:
        """Move the running requests back into the slot matrix, in running order."""
        batch, step = self._batch, self.num_steps
        ids = np.fromiter(batch.offsets.keys(), np.int64, len(batch))
        computed = np.fromiter(batch.offsets.values(), np.int64, len(batch)) + step
        self._slots = slot_matrix(ids, computed, computed + 1, self._end_tokens[ids], self._prompt[ids],
                                  -(-computed // self.config.block_size))
        self._batch = None

    def _can_stretch(self) -> bool:
        """True when nothing can be admitted before a request finishes (vLLM would only decode)."""
        running = len(self._batch)
        if running == 0:
            return False
        if not self._waiting or running >= self.config.max_num_seqs:
            return True
        head_blocks = -(-int(self._num_tokens[self._waiting[0]]) // self.config.block_size)
        return head_blocks + self._watermark_blocks > self._free_blocks

    def _stretch(self, horizon: float) -> bool:
        """Run decode steps up to the next finish, block shortage, arrival or horizon as one unit."""
        batch, step = self._batch, self.num_steps
        steps = batch.steps_blocks_allow(step, batch.next_finish() - step, self._free_blocks)
        if steps == 0:
            return self._decode_step(horizon)
        running = len(batch)
        if self._clocked:
            steps = self._priced_stretch(steps, horizon)
            if steps == 0:  # only the horizon stops a stretch before its first step
                return False
        else:
            if self.record_trace:
                self._trace_steps(self.now if not self._times.unpriced else np.nan, np.nan, steps, 0, running, running)
            self._times.defer((steps, 0, 0, running, batch.context(step) + running, 0.0))
        self._free_blocks -= batch.blocks_for_steps(step, steps)
        self._stamp_first_tokens_due(step + 1)
        self.num_steps = step + steps
        self._release_followers(self._finish_decoders())
        return True

    def _priced_stretch(self, steps: int, horizon: float) -> int:
        """Price up to ``steps`` decode steps, cut at the next arrival and the horizon; returns how many run."""
        batch = self._batch
        running = len(batch)
        context = float(batch.context(self.num_steps)) + running * np.arange(1, steps + 1, dtype=np.float64)
        seconds = np.asarray(self.latency.step_seconds(0, 0, running, context, 0.0), dtype=np.float64)
        if seconds.ndim == 0:  # a model may answer one number for steps that differ only in context
            seconds = np.full(steps, float(seconds))
        times = np.cumsum(np.concatenate(([self.now], seconds)))  # sequential sums, as stepping one by one
        starts, ends = times[:-1], times[1:]
        limit = steps
        if self._pending and running < self.config.max_num_seqs:
            # A request that arrived while earlier ones were being admitted is already due: it is taken after
            # one step, as when stepping one by one, rather than stopping the stretch (and the run) at zero.
            limit = min(limit, max(1, int(np.searchsorted(starts, self._pending[0][0], side="left"))))
        limit = min(limit, int(np.searchsorted(ends, horizon, side="right")))
        if limit:
            if self.record_trace:
                self._trace_steps(self.now, float(ends[limit - 1] - self.now), limit, 0, running, running)
            self._times.record_many(ends[:limit])
            self.now = float(ends[limit - 1])
        return limit

    def _decode_step(self, horizon: float) -> bool:
        """One step from the decode mode: preempt if blocks run short, else admit, then decode everyone."""
        batch, step = self._batch, self.num_steps
        needed = batch.blocks_for_steps(step, 1)
        victims: list[tuple[int, int]] = []
        admitted: list[tuple[int, int]] = []
        if needed > self._free_blocks:
            victims, free = batch.plan_preemption(step, self._free_blocks)
        else:
            admission = plan_whole_admissions(self.config, self._waiting, self._num_tokens, self._watermark_blocks,
                                              len(batch), self._free_blocks - needed)
            if admission is None:
                self._leave_decode_mode()
                return self._step(horizon)
            admitted, free = admission
        kept = len(batch) - len(victims)
        num_decode = kept + sum(1 for _, num_tokens in admitted if num_tokens == 1)
        prefill = [num_tokens for _, num_tokens in admitted if num_tokens != 1]
        context = batch.context(step) - sum(offset + step for _, offset in victims) + num_decode
        pairs = sum(n * (n + 1) for n in prefill) / 2 if admitted else 0.0
        features = (sum(prefill), len(prefill), num_decode, context, pairs)
        if not prefill and not num_decode:
            raise SamullmError("simulated engine stalled: no request could be scheduled (KV cache too small?)")
        if not self._take_step(features, horizon, kept + len(admitted)):
            return False
        if victims:
            self._preempt(victims)
        self._free_blocks = free
        self.num_steps = step + 1
        self._stamp_first_tokens_due(step + 1)
        self._release_followers(self._start_decoding(admitted) + self._finish_decoders())
        return True


    def _preempt(self, victims: list[tuple[int, int]]) -> None:
        """Send preempted decoders back to the front of the waiting queue (their blocks are already freed)."""
        step = self.num_steps
        for request, offset in victims:
            self._batch.remove(request)
            self._num_tokens[request] = offset + step + 1
        self._waiting.extendleft([request for request, _ in victims])
        self.num_preemptions += len(victims)

    def _start_decoding(self, admitted: list[tuple[int, int]]) -> list[int]:
        """Requests whose whole prompt was computed in this step: sample, then decode or finish; returns the
        ones that finished."""
        step, batch = self.num_steps, self._batch
        finished = []
        for request, num_tokens in admitted:
            self._waiting.popleft()
            if num_tokens == self._prompt[request]:
                self._first_token_step[request] = step
            end_tokens = int(self._end_tokens[request])
            if num_tokens + 1 >= end_tokens:
                self._finish_step[request] = step
                self.num_finished += 1
                self._num_tokens[request] = num_tokens + 1
                self._free_blocks += self.config.blocks_for(num_tokens)
                finished.append(request)
            else:
                batch.add(request, num_tokens - step, end_tokens)
        return finished

    def _stamp_first_tokens_due(self, step: int) -> None:
        """Record the first token of requests that entered the decode mode one token short of their prompt."""
        batch = self._batch
        for request in batch.first_tokens_due:
            if request in batch.offsets:
                self._first_token_step[request] = step
        batch.first_tokens_due = []

    def _finish_decoders(self) -> list[int]:
        """Finish the decoders whose output is complete after this step and free their blocks; returns them."""
        step = self.num_steps
        finished = []
        for request, offset in self._batch.pop_finished(step):
            self._finish_step[request] = step
            self.num_finished += 1
            self._num_tokens[request] = offset + step + 1
            self._free_blocks += self._batch.blocks(offset, step)
            finished.append(request)
        return finished
