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

The running requests live in one of two representations, with the same schedule either way:

- the *general* one, a dense slot matrix in vLLM's running order, planned with numpy; it serves any state,
  in particular requests whose prefill is split over several steps;
- the *decode mode*, used whenever every running request decodes (the steady state of a large request
  set). A decoding request gains one computed token per step, so it is stored as ``computed - step``, a
  constant: a step changes no per-request state, a min-heap names the requests that finish, counts of
  offsets modulo the block size give the KV blocks a step allocates, and the scheduling is plain Python
  on scalars. Admitting a request whose prompt gets only a chunk switches back to the general form.

Decode-only stretches in which no request can finish, arrive or be admitted are fast-forwarded as one
unit. Steps are priced as they are scheduled only while the clock matters (requests still to arrive, or
``run(until=...)``); otherwise nothing in the schedule depends on time, so steps are recorded unpriced and
priced together in one vectorised latency-model call when the run ends. Finish and first-token times are
kept as step numbers and read from the table of step end times.

The simulator is resumable: ``run(until=t)`` stops at the last step that ends by ``t`` and a later
``run()`` continues from there, which is how the planner advances a model by t seconds.

A request may wait for earlier requests of the same simulator (it reads their outputs, as a chain of
nodes served by one engine does): it arrives when the last of them finishes, or at its own arrival time
if that is later, exactly as if it had been added at that moment. The clock need not run for that: a
request released at the end of a step is due at once, its admission time is deferred with the steps, and
only a request whose own arrival time is later than the clock makes the deferred steps be priced.
"""

from __future__ import annotations

import copy
import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from samullm_lc.costmodel.latency.base import IterationLatencyModel
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.errors import ConfigError, SamullmError
from samullm_lc.limits import Limit

PRICING_BATCH = 64
"""Rows of unpriced steps ``run(..., overshoot_ok=True)`` first collects before pricing them and checking the clock."""
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


class _StepTimes:
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

    def copy(self) -> _StepTimes:
        """An independent copy (the unpriced rows are tuples, so a shallow list copy will do)."""
        clone = _StepTimes.__new__(_StepTimes)
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


class _DecodeBatch:
    """Running requests that all decode, in running order, stored as ``computed - step`` (constant).

    With that offset ``c`` a request has ``c + step`` computed tokens and ``c + step + 1`` tokens after
    ``step`` steps, so it finishes after step ``end_tokens - c - 1`` and needs a new KV block in the step
    after ``step`` exactly when ``(c + step) % block_size == 0``.
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.offsets: dict[int, int] = {}  # request id -> computed - step, in running order
        self.residues = [0] * block_size  # how many offsets have each value modulo block_size
        self.offset_sum = 0
        self._finishing: list[tuple[int, int, int]] = []  # heap of (finishing step, id, offset); stale kept
        self.first_tokens_due: list[int] = []  # ids whose next step computes the prompt's last token

    def copy(self) -> _DecodeBatch:
        """An independent copy (its containers hold numbers and tuples, so shallow copies will do)."""
        clone = _DecodeBatch.__new__(_DecodeBatch)
        clone.block_size, clone.offset_sum = self.block_size, self.offset_sum
        clone.offsets, clone.residues = self.offsets.copy(), self.residues.copy()
        clone._finishing, clone.first_tokens_due = self._finishing.copy(), self.first_tokens_due.copy()
        return clone

    def __len__(self) -> int:
        return len(self.offsets)

    def shift_ids(self, count: int) -> None:
        """Renumber every request id down by ``count`` (see ``ContinuousBatchingSimulator.forget``); heap
        entries of requests no longer here are dropped, the rest keep their order."""
        self.offsets = {request - count: offset for request, offset in self.offsets.items()}
        self._finishing = [(step, request - count, offset) for step, request, offset in self._finishing
                           if request >= count]
        heapq.heapify(self._finishing)
        self.first_tokens_due = [request - count for request in self.first_tokens_due]

    def add(self, request: int, offset: int, end_tokens: int) -> None:
        """Append a decoding request to the running order."""
        self.offsets[request] = offset
        self.residues[offset % self.block_size] += 1
        self.offset_sum += offset
        heapq.heappush(self._finishing, (end_tokens - offset - 1, request, offset))

    def remove(self, request: int) -> int:
        """Take a request out of the batch; returns its offset."""
        offset = self.offsets.pop(request)
        self.residues[offset % self.block_size] -= 1
        self.offset_sum -= offset
        return offset

    def context(self, step: int) -> int:
        """Computed tokens of all requests after ``step`` steps."""
        return self.offset_sum + len(self.offsets) * step

    def blocks(self, offset: int, step: int) -> int:
        """KV blocks a request with this offset holds after ``step`` steps."""
        return -(-(offset + step) // self.block_size)

    def next_finish(self) -> int:
        """The step after which the next request finishes."""
        heap = self._finishing
        while self.offsets.get(heap[0][1]) != heap[0][2]:
            heapq.heappop(heap)
        return heap[0][0]

    def pop_finished(self, step: int) -> list[tuple[int, int]]:
        """Remove and return ``(id, offset)`` of the requests that finish after ``step`` steps."""
        heap, finished = self._finishing, []
        while heap and heap[0][0] <= step:
            _, request, offset = heapq.heappop(heap)
            if self.offsets.get(request) == offset:
                self.remove(request)
                finished.append((request, offset))
        return finished

    def blocks_for_steps(self, step: int, steps: int) -> int:
        """KV blocks the ``steps`` steps after ``step`` allocate."""
        full, part = divmod(steps, self.block_size)
        first = -step % self.block_size  # residue needing a block in the first step; it falls by 1 per step
        if part <= first + 1:
            partial = sum(self.residues[first - part + 1 : first + 1])
        else:
            partial = sum(self.residues[: first + 1]) + sum(self.residues[first - part + 1 :])
        return full * len(self.offsets) + partial

    def steps_blocks_allow(self, step: int, steps: int, free: int) -> int:
        """Largest k <= steps such that the k steps after ``step`` fit in ``free`` blocks."""
        if self.blocks_for_steps(step, steps) <= free:
            return steps
        periods, left = divmod(free, len(self.offsets))  # every request needs one block per block_size steps
        k = periods * self.block_size
        residue = -step % self.block_size
        while left >= self.residues[residue]:
            left -= self.residues[residue]
            k += 1
            residue = (residue - 1) % self.block_size
        return min(k, steps)

    def plan_preemption(self, step: int, free: int) -> tuple[list[tuple[int, int]], int]:
        """vLLM's running loop when the next step's blocks exceed ``free``: preempt from the tail.

        Walking the running list, each request needing a block takes a free one; when none is free the tail
        request is preempted, until the walk reaches the tail (the request then preempted itself). Only the
        counts of requests needing a block matter, so the walk takes them in bulk and touches only victims.
        Returns the victims as ``(id, offset)`` in preemption order and the blocks free after the step.
        """
        residue = -step % self.block_size
        pending = self.residues[residue]  # requests needing a block that neither got one nor were preempted
        tail = reversed(self.offsets.items())
        victims: list[tuple[int, int]] = []
        while pending:
            taken = min(free, pending)
            free -= taken
            pending -= taken
            while pending and free < 1:
                request, offset = next(tail)
                victims.append((request, offset))
                free += self.blocks(offset, step)
                if offset % self.block_size == residue:
                    pending -= 1
        return victims, free


class ContinuousBatchingSimulator:
    """A resumable simulation of one vLLM engine serving requests that may arrive over time.

    Requests not running live in per-request arrays; running ones live either in a dense slot matrix kept
    in vLLM's running order (general form) or, while all of them decode, in a ``_DecodeBatch``.
    """

    def __init__(self, config: SchedulerConfig, latency: IterationLatencyModel, *, record_trace: bool = False):
        self.config = config
        self.latency = latency
        self.record_trace = record_trace
        self.now = 0.0
        self.num_steps = 0
        self.num_preemptions = 0
        self.num_finished = 0
        # Per request, indexed by id.
        self._prompt = np.zeros(0, np.int64)
        self._end_tokens = np.zeros(0, np.int64)  # prompt + target output: the length at which it finishes
        self._num_tokens = np.zeros(0, np.int64)  # prompt + generated, for requests not running
        self._finish_step = np.zeros(0, np.int64)  # step after which it finished; 0: not yet
        self._first_token_step = np.zeros(0, np.int64)
        self._slots = np.zeros((6, 0), np.int64)
        self._batch: _DecodeBatch | None = None  # the running requests while in decode mode
        self._waiting: deque[int] = deque()
        self._pending: list[tuple[float, int]] = []  # heap of (arrival seconds, id) not yet arrived
        self._blocked: dict[int, int] = {}  # id -> how many requests it waits for have not finished
        self._blocked_arrival: dict[int, float] = {}  # id -> its own arrival seconds, while blocked
        self._followers: dict[int, list[int]] = {}  # id -> the blocked requests waiting for it
        self._free_blocks = config.usable_kv_blocks
        self._watermark_blocks = int(config.watermark * config.num_kv_blocks)
        self._times = _StepTimes()
        self._clocked = True  # whether steps are priced as they are scheduled
        # Rows of [start, seconds, first step, steps, prefill tokens, decode seqs, running, waiting, seconds
        # deferred before the first step]; start and seconds are nan until the steps are priced.
        self._trace: list[list[float]] = []

    def __deepcopy__(self, memo: dict[int, object]) -> ContinuousBatchingSimulator:
        """An independent copy of the engine state, for forking a replay. The config and latency model are
        shared (read-only); every container is copied one level deep, which is all its numbers need:
        ``copy.deepcopy`` would walk each of them and made forking a large replay take seconds."""
        clone = copy.copy(self)
        memo[id(self)] = clone
        for name in ("_prompt", "_end_tokens", "_num_tokens", "_finish_step", "_first_token_step", "_slots",
                     "_waiting", "_pending", "_blocked", "_blocked_arrival", "_times"):
            setattr(clone, name, getattr(self, name).copy())
        clone._batch = self._batch.copy() if self._batch is not None else None
        clone._followers = {request: waiting.copy() for request, waiting in self._followers.items()}
        clone._trace = [row.copy() for row in self._trace]
        return clone

    def forget(self, count: int) -> None:
        """Drop the first ``count`` requests, which must all have finished; later requests' ids go down by
        ``count``. A simulator serving an endless stream (the pool's simulated engines) stays bounded this
        way; the schedule does not change, as finished requests hold nothing the scheduler reads.
        """
        if count <= 0:
            return
        if count > self._prompt.size or not self._finish_step[:count].all():
            raise SamullmError(f"cannot forget the first {count} requests: only finished requests can be forgotten")
        for name in ("_prompt", "_end_tokens", "_num_tokens", "_finish_step", "_first_token_step"):
            setattr(self, name, getattr(self, name)[count:].copy())
        self._slots = self._slots.copy()
        self._slots[ID] -= count
        if self._batch is not None:
            self._batch.shift_ids(count)
        self._waiting = deque(request - count for request in self._waiting)
        self._pending = [(arrival, request - count) for arrival, request in self._pending]  # order kept
        self._blocked = {request - count: n for request, n in self._blocked.items()}
        self._blocked_arrival = {request - count: t for request, t in self._blocked_arrival.items()}
        self._followers = {request - count: [f - count for f in followers]
                           for request, followers in self._followers.items()}

    # ---- input -------------------------------------------------------------------------------------
    def add_requests(
        self,
        input_tokens: ArrayLike,
        output_tokens: ArrayLike,
        arrival_seconds: ArrayLike | None = None,
        after: Sequence[Sequence[int]] | None = None,
    ) -> np.ndarray:
        """Queue requests (prompt and output lengths in tokens); returns their ids.

        ``after`` lists, per request, the ids of earlier requests it waits for: it arrives when the last of
        them finishes, or at its arrival time if that is later.
        """
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
        if cfg.blocks_for(longest) > cfg.usable_kv_blocks:
            raise ConfigError(
                f"a sequence of {longest} tokens needs more than the {cfg.usable_kv_blocks} usable KV blocks of "
                f"{cfg.block_size} tokens the engine has; give the engine more KV-cache memory"
            )
        first = self._prompt.size
        ids = np.arange(first, first + prompt.size)
        arrivals = list(zip(arrival.tolist(), ids.tolist(), strict=True))
        waits = [] if after is None else list(after)
        if after is not None and len(waits) != prompt.size:
            raise ConfigError(f"after lists {len(waits)} requests' predecessors for {prompt.size} requests")
        for request_id, before in zip(ids.tolist(), waits):
            if before and not all(0 <= p < request_id for p in before):
                raise ConfigError(
                    f"request {request_id} waits for {before}: a request can only wait for earlier requests "
                    f"(ids 0 to {request_id - 1})"
                )
        never = np.zeros(prompt.size, np.int64)
        self._prompt = np.concatenate([self._prompt, prompt])
        self._end_tokens = np.concatenate([self._end_tokens, prompt + target])
        self._num_tokens = np.concatenate([self._num_tokens, prompt])
        self._finish_step = np.concatenate([self._finish_step, never])
        self._first_token_step = np.concatenate([self._first_token_step, never])
        if any(waits):
            for (t, request_id), before in zip(arrivals, waits):
                if before:
                    self._hold(request_id, t, before)
            arrivals = [pair for pair, before in zip(arrivals, waits) if not before]
        self._pending.extend(arrivals)
        heapq.heapify(self._pending)
        return ids

    def _hold(self, request: int, arrival: float, after: Sequence[int]) -> None:
        """Hold a new request back until the requests it waits for finish (put it in the arrival heap if they
        have: a finished request's finish time is already priced, ``run`` prices every step before it returns).
        """
        unfinished = 0
        for predecessor in after:
            step = int(self._finish_step[predecessor])
            if step:
                arrival = max(arrival, float(self._times.at(step)))
            else:
                self._followers.setdefault(predecessor, []).append(request)
                unfinished += 1
        if unfinished:
            self._blocked[request] = unfinished
            self._blocked_arrival[request] = arrival
        else:
            heapq.heappush(self._pending, (arrival, request))

    def _release_followers(self, finished: Iterable[int]) -> None:
        """Requests that waited for the ones a step just finished arrive once none they wait for is unfinished:
        when that step ended, or at their own arrival time if that is later.

        While steps await pricing the clock stands before them, earlier than the step's end. The released
        requests are then stamped with the clock: due at once just the same, in id order. Only if one of
        them has its own arrival time later than the clock are the steps priced first, so that the clock is
        the step's end and each arrives at the later of the two.
        """
        if not self._followers:
            return
        released = []
        for request in finished:
            for follower in self._followers.pop(request, ()):
                self._blocked[follower] -= 1
                if not self._blocked[follower]:
                    del self._blocked[follower]
                    released.append((self._blocked_arrival.pop(follower), follower))
        if self._times.unpriced and any(arrival > self.now for arrival, _ in released):
            self.now = self._times.price_unpriced(self.latency, self.now)
        for arrival, follower in released:
            heapq.heappush(self._pending, (max(arrival, self.now), follower))

    # ---- main loop ---------------------------------------------------------------------------------
    def run(
        self, until: float | None = None, *, stop_at_first_finish: bool = False, overshoot_ok: bool = False
    ) -> SimulationResult:
        """Advance until every request has finished, or to the last step ending by ``until`` seconds.

        A step that would still be running at ``until`` is left unstarted, so the clock stops at the end of
        the last whole step and a later ``run`` continues exactly as one uninterrupted run would. With
        ``stop_at_first_finish`` it also stops after the first step in which a request finishes (event-driven
        callers such as the pool's simulated engines advance finish by finish). With ``overshoot_ok`` the
        steps are priced in batches rather than one by one (``PRICING_BATCH`` rows, then twice as many each
        time), and the run stops after the first batch that ends after ``until``: cheaper, for callers that
        only need the run to get that far (it goes at most about twice as far as it had to).
        """
        horizon = np.inf if until is None else float(until)
        finished_before = self.num_finished
        batch = PRICING_BATCH
        while True:
            if stop_at_first_finish and self.num_finished > finished_before:
                break
            if self._pending and self._pending[0][0] <= self.now:
                self._admit_arrivals()
            if self._num_running() == 0 and not self._waiting:
                if not self._pending:
                    break
                next_arrival = self._pending[0][0]
                if next_arrival > horizon:
                    self.now = max(self.now, horizon)
                    break
                self.now = max(self.now, next_arrival)
                continue
            self._clocked = bool(self._pending) or (until is not None and not overshoot_ok)
            if not self._advance(horizon):
                break
            if overshoot_ok and len(self._times.unpriced) >= batch:
                self.now = self._times.price_unpriced(self.latency, self.now)
                if self.now >= horizon:
                    break
                batch *= 2
        return self.result()

    def result(self) -> SimulationResult:
        """The current state, without advancing (steps not priced yet are priced first)."""
        self.now = self._times.price_unpriced(self.latency, self.now)
        num_tokens = self._num_tokens.copy()
        if self._batch is not None:
            step = self.num_steps
            for request, offset in self._batch.offsets.items():
                num_tokens[request] = offset + step + 1
        else:
            num_tokens[self._slots[ID]] = self._slots[TOKENS]
        done = not self._pending and not self._blocked and not self._waiting and self._num_running() == 0
        return SimulationResult(
            now_seconds=self.now,
            finished=done,
            finish_seconds=self._times.at(self._finish_step),
            first_token_seconds=self._times.at(self._first_token_step),
            output_tokens=num_tokens - self._prompt,
            num_steps=self.num_steps,
            num_preemptions=self.num_preemptions,
            trace=self._trace_arrays() if self.record_trace else {},
        )

    def _trace_arrays(self) -> dict[str, np.ndarray]:
        """The trace as named columns, start and seconds of unpriced rows read from the step end times."""
        rows = np.asarray(self._trace, dtype=np.float64).reshape(-1, 9)
        first, steps = rows[:, 2].astype(np.int64), rows[:, 3].astype(np.int64)
        start = np.where(np.isnan(rows[:, 0]), self._times.at(first - 1) + rows[:, 8], rows[:, 0])
        seconds = np.where(np.isnan(rows[:, 1]), self._times.at(first + steps - 1) - start, rows[:, 1])
        columns = (start, seconds, rows[:, 3], rows[:, 4], rows[:, 5], rows[:, 6], rows[:, 7])
        return dict(zip(_TRACE_FIELDS, columns, strict=True))

    def _num_running(self) -> int:
        """Requests in the running list."""
        return len(self._batch) if self._batch is not None else self._slots.shape[1]

    def _admit_arrivals(self) -> None:
        """Move the requests that have arrived by now to the waiting queue, charging their admission."""
        count = 0
        while self._pending and self._pending[0][0] <= self.now:
            self._waiting.append(heapq.heappop(self._pending)[1])
            count += 1
        if self._times.unpriced:  # the clock stands before the steps awaiting pricing: admit after them
            self._times.wait(count * self.latency.per_request_seconds)
        else:
            self.now += count * self.latency.per_request_seconds

    def _can_fast_forward(self) -> bool:
        """Whether all-decode states may use the decode mode; stepping in the general form is its reference."""
        return True

    def _advance(self, horizon: float) -> bool:
        """Take the next step or decode stretch; False if the horizon stops it before it starts."""
        if self._batch is None:
            if not self._can_fast_forward() or not self._all_decoding():
                return self._step(horizon)
            self._enter_decode_mode()
        if self._can_stretch():
            return self._stretch(horizon)
        return self._decode_step(horizon)

    # ---- the clock ---------------------------------------------------------------------------------
    def _take_step(self, features: tuple[int, int, int, int, float], horizon: float, running: int) -> bool:
        """Price one step (now, or later if the clock does not matter); False if it would end after ``horizon``."""
        if self._clocked:
            seconds = float(self.latency.step_seconds(*features))
            end = self.now + seconds
            if end > horizon:  # the step would still be running at the horizon: leave it unstarted
                return False
            if self.record_trace:
                self._trace_steps(self.now, seconds, 1, features[0], features[2], running)
            self._times.record(end)
            self.now = end
        else:
            if self.record_trace:
                start = self.now if not self._times.unpriced else np.nan
                self._trace_steps(start, np.nan, 1, features[0], features[2], running)
            self._times.defer((1, *features))
        return True

    def _trace_steps(
        self, start: float, seconds: float, steps: int, prefill_tokens: int, decode_seqs: int, running: int
    ) -> None:
        """Add a trace row for the next ``steps`` steps; ``nan`` start or seconds are filled in once priced (the
        row keeps the admission seconds deferred before its first step, to place its start)."""
        row = [start, seconds, self.num_steps + 1, steps, prefill_tokens, decode_seqs, running, len(self._waiting),
               self._times.gap]
        self._trace.append(row)

    # ---- general form: one step planned on the slot matrix -----------------------------------------
    def _step(self, horizon: float) -> bool:
        """Plan one step as vLLM would, price it, and apply it unless it ends after ``horizon``."""
        plan = self._plan_running()
        if not plan.victims:
            self._plan_waiting(plan)
        features = self._features(plan)
        if features[0] == 0 and features[2] == 0:
            raise SamullmError("simulated engine stalled: no request could be scheduled (KV cache too small?)")
        if not self._take_step(features, horizon, plan.slots.shape[1]):
            return False
        self._commit(plan)
        return True

    def _features(self, plan: _StepPlan) -> tuple[int, int, int, int, float]:
        """The step's shape as the latency model takes it."""
        slots, scheduled = plan.slots, plan.scheduled
        computed = slots[COMPUTED]
        remaining = slots[TOKENS] - computed
        if int(remaining.max()) == 1 and not plan.num_admitted:  # decode only
            num_decode = int(np.count_nonzero(scheduled))
            return 0, 0, num_decode, int(computed[scheduled > 0].sum()) + num_decode, 0.0
        decode = (remaining == 1) & (scheduled == 1)
        chunk = np.where(decode, 0, scheduled)
        num_decode = int(np.count_nonzero(decode))
        prefill_tokens = int(chunk.sum())
        prefill_seqs = int(np.count_nonzero(chunk))
        decode_context = int(computed[decode].sum()) + num_decode
        pairs = float((chunk * (2 * computed + chunk + 1)).sum() / 2)
        return prefill_tokens, prefill_seqs, num_decode, decode_context, pairs

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

    def _commit(self, plan: _StepPlan) -> None:
        """Apply a priced plan: preemptions, admissions, block allocations, sampled tokens, finishes."""
        if plan.victims:
            old = self._slots
            self._num_tokens[old[ID, plan.slots.shape[1] :]] = old[TOKENS, plan.slots.shape[1] :]
            self._waiting.extendleft(plan.victims)
            self.num_preemptions += len(plan.victims)
        for _ in range(plan.num_admitted):
            self._waiting.popleft()
        self.num_steps += 1
        slots = plan.slots
        slots[COMPUTED] += plan.scheduled
        sampled = slots[COMPUTED] == slots[TOKENS]
        first = sampled & (slots[TOKENS] == slots[PROMPT])
        if first.any():
            self._first_token_step[slots[ID, first]] = self.num_steps
        slots[TOKENS] += sampled
        done = sampled & (slots[TOKENS] >= slots[END])
        free = plan.free_blocks
        if done.any():
            finished = slots[:, done]
            self._finish_step[finished[ID]] = self.num_steps
            self.num_finished += int(finished.shape[1])
            self._num_tokens[finished[ID]] = finished[TOKENS]
            free += int(finished[BLOCKS].sum())
            slots = slots[:, ~done]
            self._release_followers(finished[ID].tolist())
        self._slots = slots
        self._free_blocks = free

    # ---- decode mode -------------------------------------------------------------------------------
    def _all_decoding(self) -> bool:
        """True when every running request decodes and all fit in one step's token budget."""
        slots = self._slots
        if slots.shape[1] > self.config.max_num_batched_tokens:
            return False
        return not slots.shape[1] or bool(((slots[TOKENS] - slots[COMPUTED]) == 1).all())

    def _enter_decode_mode(self) -> None:
        """Move the running requests from the slot matrix into a ``_DecodeBatch``."""
        slots, step = self._slots, self.num_steps
        batch = _DecodeBatch(self.config.block_size)
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
        slots = np.empty((6, ids.size), np.int64)
        slots[ID] = ids
        slots[COMPUTED] = computed
        slots[TOKENS] = computed + 1
        slots[END] = self._end_tokens[ids]
        slots[PROMPT] = self._prompt[ids]
        slots[BLOCKS] = -(-computed // self.config.block_size)
        self._slots = slots
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
            admission = self._plan_whole_admissions(len(batch), self._free_blocks - needed)
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

    def _plan_whole_admissions(self, running: int, free: int) -> tuple[list[tuple[int, int]], int] | None:
        """Waiting requests the step admits, as ``(id, num_tokens)``, and the blocks left free.

        None when an admitted request would get only a chunk of its prompt: the general form plans that step.
        """
        cfg = self.config
        budget = cfg.max_num_batched_tokens - running
        waiting = self._waiting
        if not waiting or budget <= 0 or running >= cfg.max_num_seqs:
            return [], free
        threshold = cfg.long_prefill_token_threshold if running + len(waiting) > 1 else 0
        block_size = cfg.block_size
        admitted: list[tuple[int, int]] = []
        for request in waiting:
            if budget <= 0 or running + len(admitted) >= cfg.max_num_seqs:
                break
            num_tokens = int(self._num_tokens[request])
            watermark = self._watermark_blocks if running or admitted else 0
            if -(-num_tokens // block_size) + watermark > free:
                break
            new = min(num_tokens, threshold) if threshold else num_tokens
            if not cfg.enable_chunked_prefill and new > budget:
                break
            if min(new, budget) < num_tokens:
                return None
            admitted.append((request, num_tokens))
            free -= -(-num_tokens // block_size)
            budget -= num_tokens
        return admitted, free

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


class StepLimitedSimulator(ContinuousBatchingSimulator):
    """A simulator that raises ``ConfigError`` once its steps pass ``step_limit``: its memory grows with the
    steps (their end times, and the unpriced steps expanded one row each when they are priced), and a request
    set of which few requests fit the KV cache at once takes many steps per request."""

    def __init__(self, config: SchedulerConfig, latency: IterationLatencyModel, *, step_limit: Limit,
                 record_trace: bool = False):
        super().__init__(config, latency, record_trace=record_trace)
        self.step_limit = step_limit

    def _advance(self, horizon: float) -> bool:
        advanced = super()._advance(horizon)
        self.step_limit.check(self.num_steps)
        return advanced


def simulate(
    config: SchedulerConfig,
    latency: IterationLatencyModel,
    input_tokens: ArrayLike,
    output_tokens: ArrayLike,
    arrival_seconds: ArrayLike | None = None,
    *,
    after: Sequence[Sequence[int]] | None = None,
    until: float | None = None,
    record_trace: bool = False,
    step_limit: Limit | None = None,
) -> SimulationResult:
    """Simulate one engine on a request set in one call (``after``: see ``add_requests``; ``step_limit``: see
    ``StepLimitedSimulator``)."""
    simulator = (ContinuousBatchingSimulator(config, latency, record_trace=record_trace) if step_limit is None
                 else StepLimitedSimulator(config, latency, step_limit=step_limit, record_trace=record_trace))
    simulator.add_requests(input_tokens, output_tokens, arrival_seconds, after)
    return simulator.run(until=until)
