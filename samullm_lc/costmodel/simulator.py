"""Simulate what vLLM v1's scheduler does with a request set, step by step, priced by a latency model.

The scheduling semantics follow vLLM v1 (``vllm/v1/core/sched/scheduler.py``), re-implemented here:

- each step has a token budget (``max_num_batched_tokens``); RUNNING requests are served first, in order,
  each asking for ``num_tokens - num_computed_tokens`` tokens (1 when decoding, the rest of the prompt when
  prefilling, cut to the budget: chunked prefill);
- a running request whose new tokens need KV blocks that are not free preempts the request at the tail of
  the running list (recompute: its blocks are freed, ``num_computed_tokens`` goes back to 0 and it returns
  to the front of the waiting queue, its generated tokens becoming part of its prompt);
- if nothing was preempted, WAITING requests are admitted in order while budget, ``max_num_seqs`` and
  blocks allow; admission requires the whole current sequence to fit in the free blocks;
- a request whose computed tokens reach its length samples one token at the end of the step; it finishes
  when its output reaches its target length (the sampled output length) and frees its blocks.

Decode-only stretches in which no request can finish, arrive or be admitted are fast-forwarded: their
step times are priced as one numpy array, so a 100,000-request set simulates in seconds.
The simulator is resumable: ``run(until=t)`` stops at the last step that ends by ``t`` and a later
``run()`` continues from there, which is how the planner advances a model by t seconds.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from samullm_lc.costmodel.latency.base import IterationLatencyModel
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.errors import ConfigError, SamullmError

_TRACE_FIELDS = ("start_seconds", "seconds", "num_steps", "prefill_tokens", "decode_seqs", "num_running", "num_waiting")


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
        return int(np.count_nonzero(~np.isnan(self.finish_seconds)))


# Rows of the running-slot matrix: one column per running request, in vLLM's running order.
ID, COMPUTED, TOKENS, END, PROMPT, BLOCKS = range(6)


@dataclass(slots=True)
class _StepPlan:
    """One step's schedule before it is applied.

    ``slots`` has the running-slot rows for the new running order (admitted requests last), with the
    state before the step except BLOCKS, which holds the blocks once the step's tokens are allocated.
    """

    slots: np.ndarray
    scheduled: np.ndarray  # tokens each request computes in this step (0: budget ran out)
    free_blocks: int
    budget: int
    victims: list[int]  # preempted request ids, in preemption order
    num_admitted: int = 0


class ContinuousBatchingSimulator:
    """A resumable simulation of one vLLM engine serving requests that may arrive over time.

    Requests not running live in per-request arrays; running ones live in a dense slot matrix kept in
    vLLM's running order, so a step touches only contiguous arrays of at most ``max_num_seqs`` columns.
    """

    def __init__(self, config: SchedulerConfig, latency: IterationLatencyModel, *, record_trace: bool = False):
        self.config = config
        self.latency = latency
        self.record_trace = record_trace
        self.now = 0.0
        self.num_steps = 0
        self.num_preemptions = 0
        # Per request, indexed by id.
        self._prompt = np.zeros(0, np.int64)
        self._end_tokens = np.zeros(0, np.int64)  # prompt + target output: the length at which it finishes
        self._num_tokens = np.zeros(0, np.int64)  # prompt + generated, for requests not running
        self._finish = np.zeros(0, np.float64)
        self._first_token = np.zeros(0, np.float64)
        self._slots = np.zeros((6, 0), np.int64)
        self._waiting: deque[int] = deque()
        self._pending: list[tuple[float, int]] = []  # heap of (arrival seconds, id) not yet arrived
        self._free_blocks = config.num_kv_blocks
        self._watermark_blocks = int(config.watermark * config.num_kv_blocks)
        self._trace: list[tuple[float, float, int, int, int, int, int]] = []

    # ---- input -------------------------------------------------------------------------------------
    def add_requests(
        self, input_tokens: ArrayLike, output_tokens: ArrayLike, arrival_seconds: ArrayLike | None = None
    ) -> np.ndarray:
        """Queue requests (prompt and output lengths in tokens); returns their ids."""
        prompt = np.atleast_1d(np.asarray(input_tokens, dtype=np.int64))
        target = np.broadcast_to(np.asarray(output_tokens, dtype=np.int64), prompt.shape).copy()
        arrival = (
            np.full(prompt.shape, self.now)
            if arrival_seconds is None
            else np.broadcast_to(np.asarray(arrival_seconds, dtype=np.float64), prompt.shape)
        )
        cfg = self.config
        if prompt.size and (prompt.min() < 1 or target.min() < 1):
            raise ConfigError("every request needs at least 1 input token and 1 output token")
        too_long = prompt >= cfg.max_model_len
        if too_long.any():
            raise ConfigError(
                f"{int(too_long.sum())} prompt(s) of up to {int(prompt.max())} tokens leave no room for output "
                f"within max_model_len={cfg.max_model_len}; shorten them or raise max_model_len"
            )
        np.minimum(target, cfg.max_model_len - prompt, out=target)  # vLLM stops a sequence at max_model_len
        longest = int((prompt + target).max(initial=0))
        if cfg.blocks_for(longest) > cfg.num_kv_blocks:
            raise ConfigError(
                f"a sequence of {longest} tokens needs more than the {cfg.num_kv_blocks} KV blocks of "
                f"{cfg.block_size} tokens the engine has; give the engine more KV-cache memory"
            )
        first = self._prompt.size
        ids = np.arange(first, first + prompt.size)
        self._prompt = np.concatenate([self._prompt, prompt])
        self._end_tokens = np.concatenate([self._end_tokens, prompt + target])
        self._num_tokens = np.concatenate([self._num_tokens, prompt])
        self._finish = np.concatenate([self._finish, np.full(prompt.size, np.nan)])
        self._first_token = np.concatenate([self._first_token, np.full(prompt.size, np.nan)])
        for request_id, t in zip(ids.tolist(), arrival.tolist(), strict=True):
            heapq.heappush(self._pending, (t, request_id))
        return ids

    # ---- main loop ---------------------------------------------------------------------------------
    def run(self, until: float | None = None) -> SimulationResult:
        """Advance until every request has finished, or to the last step ending by ``until`` seconds.

        A step that would still be running at ``until`` is left unstarted, so the clock stops at the end of
        the last whole step and a later ``run`` continues exactly as one uninterrupted run would.
        """
        horizon = np.inf if until is None else float(until)
        while True:
            if self._pending and self._pending[0][0] <= self.now:
                self._admit_arrivals()
            if self._slots.shape[1] == 0 and not self._waiting:
                if not self._pending:
                    break
                next_arrival = self._pending[0][0]
                if next_arrival > horizon:
                    self.now = max(self.now, horizon)
                    break
                self.now = max(self.now, next_arrival)
                continue
            advanced = self._fast_forward(horizon) if self._can_fast_forward() else self._step(horizon)
            if not advanced:
                break
        return self.result()

    def result(self) -> SimulationResult:
        """The current state, without advancing."""
        trace = {}
        if self.record_trace:
            rows = np.asarray(self._trace, dtype=np.float64).reshape(-1, len(_TRACE_FIELDS))
            trace = {name: rows[:, i] for i, name in enumerate(_TRACE_FIELDS)}
        num_tokens = self._num_tokens.copy()
        num_tokens[self._slots[ID]] = self._slots[TOKENS]
        done = not self._pending and not self._waiting and self._slots.shape[1] == 0
        return SimulationResult(
            now_seconds=self.now,
            finished=done,
            finish_seconds=self._finish.copy(),
            first_token_seconds=self._first_token.copy(),
            output_tokens=num_tokens - self._prompt,
            num_steps=self.num_steps,
            num_preemptions=self.num_preemptions,
            trace=trace,
        )

    def _admit_arrivals(self) -> None:
        count = 0
        while self._pending and self._pending[0][0] <= self.now:
            self._waiting.append(heapq.heappop(self._pending)[1])
            count += 1
        self.now += count * self.latency.per_request_seconds

    # ---- one ordinary step -------------------------------------------------------------------------
    def _step(self, horizon: float) -> bool:
        """Plan one step as vLLM would, price it, and apply it unless it ends after ``horizon``."""
        plan = self._plan_running()
        if not plan.victims:
            self._plan_waiting(plan)
        slots, scheduled = plan.slots, plan.scheduled
        computed = slots[COMPUTED]
        remaining = slots[TOKENS] - computed
        if int(remaining.max()) == 1 and not plan.num_admitted:  # decode only
            num_decode = int(np.count_nonzero(scheduled))
            prefill_tokens = prefill_seqs = 0
            decode_context = int(computed[scheduled > 0].sum()) + num_decode
            pairs = 0.0
        else:
            decode = (remaining == 1) & (scheduled == 1)
            chunk = np.where(decode, 0, scheduled)
            num_decode = int(np.count_nonzero(decode))
            prefill_tokens = int(chunk.sum())
            prefill_seqs = int(np.count_nonzero(chunk))
            decode_context = int(computed[decode].sum()) + num_decode
            pairs = float((chunk * (2 * computed + chunk + 1)).sum() / 2)
        if prefill_tokens == 0 and num_decode == 0:
            raise SamullmError("simulated engine stalled: no request could be scheduled (KV cache too small?)")
        seconds = float(self.latency.step_seconds(prefill_tokens, prefill_seqs, num_decode, decode_context, pairs))
        end = self.now + seconds
        if end > horizon:  # the step would still be running at the horizon: leave it unstarted
            return False
        if self.record_trace:
            self._trace.append((self.now, seconds, 1, prefill_tokens, num_decode, slots.shape[1], len(self._waiting)))
        self._commit(plan, end)
        return True

    def _plan_running(self) -> _StepPlan:
        """Schedule the RUNNING requests; blocks running short preempt from the tail (vLLM's FCFS rule)."""
        cfg = self.config
        slots = self._slots
        computed = slots[COMPUTED]
        need = slots[TOKENS] - computed
        if cfg.long_prefill_token_threshold and need.size + len(self._waiting) > 1:
            need = np.minimum(need, cfg.long_prefill_token_threshold)
        budget = cfg.max_num_batched_tokens
        total_need = int(need.sum())
        scheduled = need if total_need <= budget else np.clip(budget - (np.cumsum(need) - need), 0, need)
        blocks_after = np.where(scheduled > 0, -(-(computed + scheduled) // cfg.block_size), slots[BLOCKS])
        extra = int(blocks_after.sum()) - int(slots[BLOCKS].sum())
        if extra > self._free_blocks:
            return self._plan_running_with_preemption(need.tolist())
        planned = slots.copy()
        planned[BLOCKS] = blocks_after
        return _StepPlan(planned, scheduled, self._free_blocks - extra, budget - min(total_need, budget), [])

    def _plan_running_with_preemption(self, need: list[int]) -> _StepPlan:
        """vLLM's running loop when blocks run short: preempt from the tail until each request fits."""
        cfg = self.config
        held = self._slots[BLOCKS].tolist()
        computed = self._slots[COMPUTED].tolist()
        ids = self._slots[ID].tolist()
        kept = len(ids)  # slots [0, kept) are still running
        free, budget = self._free_blocks, cfg.max_num_batched_tokens
        victims: list[int] = []
        scheduled: list[int] = []
        blocks_after: list[int] = []
        while len(scheduled) < kept and budget > 0:
            i = len(scheduled)
            new = min(need[i], budget)
            after = -(-(computed[i] + new) // cfg.block_size)
            while after - held[i] > free and kept > i:
                kept -= 1
                victims.append(ids[kept])
                free += held[kept]
            if kept == i:  # the request had to preempt itself
                break
            scheduled.append(new)
            blocks_after.append(after)
            free -= after - held[i]
            budget -= new
        scheduled.extend([0] * (kept - len(scheduled)))
        blocks_after.extend(held[len(blocks_after) : kept])
        planned = self._slots[:, :kept].copy()
        planned[BLOCKS] = blocks_after
        return _StepPlan(planned, np.asarray(scheduled, np.int64), free, budget, victims)

    def _plan_waiting(self, plan: _StepPlan) -> None:
        """Admit WAITING requests in order while budget, max_num_seqs and KV blocks allow."""
        cfg = self.config
        running = plan.slots.shape[1]
        if not self._waiting or plan.budget <= 0 or running >= cfg.max_num_seqs:
            return
        threshold = cfg.long_prefill_token_threshold if running + len(self._waiting) > 1 else 0
        admitted: list[int] = []
        scheduled: list[int] = []
        blocks: list[int] = []
        for request in self._waiting:
            if plan.budget <= 0 or running + len(admitted) >= cfg.max_num_seqs:
                break
            num_tokens = int(self._num_tokens[request])
            watermark = self._watermark_blocks if running or admitted else 0
            if cfg.blocks_for(num_tokens) + watermark > plan.free_blocks:
                break
            new = min(num_tokens, threshold) if threshold else num_tokens
            if not cfg.enable_chunked_prefill and new > plan.budget:
                break
            new = min(new, plan.budget)
            admitted.append(request)
            scheduled.append(new)
            blocks.append(cfg.blocks_for(new))
            plan.free_blocks -= blocks[-1]
            plan.budget -= new
        if not admitted:
            return
        new_ids = np.asarray(admitted, np.int64)
        columns = np.empty((6, new_ids.size), np.int64)
        columns[ID] = new_ids
        columns[COMPUTED] = 0
        columns[TOKENS] = self._num_tokens[new_ids]
        columns[END] = self._end_tokens[new_ids]
        columns[PROMPT] = self._prompt[new_ids]
        columns[BLOCKS] = blocks
        plan.slots = np.concatenate([plan.slots, columns], axis=1)
        plan.scheduled = np.concatenate([plan.scheduled, scheduled])
        plan.num_admitted = new_ids.size

    def _commit(self, plan: _StepPlan, end: float) -> None:
        """Apply a priced plan: preemptions, admissions, block allocations, sampled tokens, finishes."""
        if plan.victims:
            old = self._slots
            self._num_tokens[old[ID, plan.slots.shape[1] :]] = old[TOKENS, plan.slots.shape[1] :]
            self._waiting.extendleft(plan.victims)
            self.num_preemptions += len(plan.victims)
        for _ in range(plan.num_admitted):
            self._waiting.popleft()
        slots = plan.slots
        slots[COMPUTED] += plan.scheduled
        sampled = slots[COMPUTED] == slots[TOKENS]
        first = sampled & (slots[TOKENS] == slots[PROMPT])
        if first.any():
            self._first_token[slots[ID, first]] = end
        slots[TOKENS] += sampled
        done = sampled & (slots[TOKENS] >= slots[END])
        free = plan.free_blocks
        if done.any():
            self._finish_requests(slots[:, done], end)
            free += int(slots[BLOCKS, done].sum())
            slots = slots[:, ~done]
        self._slots = slots
        self._free_blocks = free
        self.now = end
        self.num_steps += 1

    def _finish_requests(self, finished: np.ndarray, end: float) -> None:
        self._finish[finished[ID]] = end
        self._num_tokens[finished[ID]] = finished[TOKENS]

    # ---- fast-forward of decode-only stretches -----------------------------------------------------
    def _can_fast_forward(self) -> bool:
        """True when the next steps are all-decode and nothing can be admitted before a request finishes."""
        slots = self._slots
        running = slots.shape[1]
        if running == 0 or running > self.config.max_num_batched_tokens:
            return False
        if int((slots[TOKENS] - slots[COMPUTED]).max()) != 1:
            return False
        if not self._waiting or running >= self.config.max_num_seqs:
            return True
        head_blocks = self.config.blocks_for(int(self._num_tokens[self._waiting[0]]))
        return head_blocks + self._watermark_blocks > self._free_blocks

    def _fast_forward(self, horizon: float) -> bool:
        """Run k identical-shape decode steps at once; False if the horizon stopped it before any step."""
        cfg = self.config
        slots = self._slots
        computed = slots[COMPUTED]
        steps = int((slots[END] - slots[TOKENS]).min())
        steps = min(steps, self._steps_until_blocks_run_out(computed, steps))
        if steps == 0:
            return self._step(horizon)
        batch = computed.size
        context = float(computed.sum()) + batch * np.arange(1, steps + 1, dtype=np.float64)
        seconds = np.broadcast_to(
            np.asarray(self.latency.step_seconds(0, 0, batch, context, 0.0), dtype=np.float64), (steps,)
        )
        ends = self.now + np.cumsum(seconds)
        limit = steps
        if self._pending and batch < cfg.max_num_seqs:
            starts = ends - seconds
            limit = min(limit, int(np.searchsorted(starts, self._pending[0][0], side="left")))
        limit = min(limit, int(np.searchsorted(ends, horizon, side="right")))
        if limit == 0:  # only the horizon stops a stretch before its first step
            return False
        if self.record_trace:
            self._trace.append((self.now, float(ends[limit - 1] - self.now), limit, 0, batch, batch, len(self._waiting)))
        slots[COMPUTED] += limit
        slots[TOKENS] += limit
        blocks = -(-slots[COMPUTED] // cfg.block_size)
        self._free_blocks -= int(blocks.sum()) - int(slots[BLOCKS].sum())
        slots[BLOCKS] = blocks
        self.now = float(ends[limit - 1])
        self.num_steps += limit
        done = slots[TOKENS] >= slots[END]
        if done.any():
            self._finish_requests(slots[:, done], self.now)
            self._free_blocks += int(blocks[done].sum())
            self._slots = slots[:, ~done]
        return True

    def _steps_until_blocks_run_out(self, computed: np.ndarray, steps: int) -> int:
        """Largest k <= steps such that k decode steps fit in the free KV blocks."""
        bs = self.config.block_size
        held = int(self._slots[BLOCKS].sum())

        def needed(k: int) -> int:
            return int((-(-(computed + k) // bs)).sum()) - held

        if needed(steps) <= self._free_blocks:
            return steps
        low, high = 0, steps  # needed(low) fits, needed(high) does not
        while high - low > 1:
            mid = (low + high) // 2
            if needed(mid) <= self._free_blocks:
                low = mid
            else:
                high = mid
        return low


def simulate(
    config: SchedulerConfig,
    latency: IterationLatencyModel,
    input_tokens: ArrayLike,
    output_tokens: ArrayLike,
    arrival_seconds: ArrayLike | None = None,
    *,
    until: float | None = None,
    record_trace: bool = False,
) -> SimulationResult:
    """Simulate one engine on a request set in one call."""
    simulator = ContinuousBatchingSimulator(config, latency, record_trace=record_trace)
    simulator.add_requests(input_tokens, output_tokens, arrival_seconds)
    return simulator.run(until=until)
