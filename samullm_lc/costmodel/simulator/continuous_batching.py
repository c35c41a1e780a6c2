"""The continuous-batching simulator: one engine's requests, steps and clock, stepped as vLLM v1 schedules.

This module holds the state of one simulated engine and its main loop: requests entering (arrivals and
``after`` dependencies), the general form's steps applied (``general_form`` plans them), the clock, and
the result. The decode mode's steps live in ``decode_mode``, the pricing ledger in ``step_times``. See the
package's docstring for the scheduling rules and the two representations of the running requests.
"""

from __future__ import annotations

import copy
import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from samullm_lc.costmodel.latency.base import IterationLatencyModel
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.costmodel.simulator.decode_batch import DecodeBatch
from samullm_lc.costmodel.simulator.decode_mode import DecodeMode
from samullm_lc.costmodel.simulator.general_form import (
    BLOCKS,
    COMPUTED,
    END,
    ID,
    PROMPT,
    TOKENS,
    StepPlan,
    plan_running,
    plan_waiting,
    step_features,
)
from samullm_lc.costmodel.simulator.result import SimulationResult, StepTrace
from samullm_lc.costmodel.simulator.step_times import StepTimes
from samullm_lc.errors import ConfigError, SamullmError

PRICING_BATCH = 64
"""Rows of unpriced steps ``run(..., overshoot_ok=True)`` first collects before pricing them and checking the clock."""


class ContinuousBatchingSimulator(DecodeMode):
    """A resumable simulation of one vLLM engine serving requests that may arrive over time.

    Requests not running live in per-request arrays; running ones live either in a dense slot matrix kept
    in vLLM's running order (general form) or, while all of them decode, in a ``DecodeBatch``.

    ``fast_forward=False`` steps one general-form step at a time, never entering the decode mode: the plain
    reference the decode mode and its stretches must agree with (same steps, same times). ``on_advance``, if
    set, is called with the simulator after each step or decode stretch ``run`` tries (also one the horizon
    leaves unstarted), e.g. to check ``free_kv_blocks`` against ``held_kv_blocks``; a deep copy shares it.
    """

    def __init__(self, config: SchedulerConfig, latency: IterationLatencyModel, *, record_trace: bool = False,
                 fast_forward: bool = True,
                 on_advance: Callable[[ContinuousBatchingSimulator], None] | None = None):
        self.config = config
        self.latency = latency
        self.record_trace = record_trace
        self.on_advance = on_advance
        self._fast_forward = fast_forward
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
        self._batch: DecodeBatch | None = None  # the running requests while in decode mode
        self._waiting: deque[int] = deque()
        self._pending: list[tuple[float, int]] = []  # heap of (arrival seconds, id) not yet arrived
        self._blocked: dict[int, int] = {}  # id -> how many requests it waits for have not finished
        self._blocked_arrival: dict[int, float] = {}  # id -> its own arrival seconds, while blocked
        self._followers: dict[int, list[int]] = {}  # id -> the blocked requests waiting for it
        self._free_blocks = config.usable_kv_blocks
        self._watermark_blocks = int(config.watermark * config.num_kv_blocks)
        self._times = StepTimes()
        self._clocked = True  # whether steps are priced as they are scheduled
        self._trace = StepTrace()

    def __deepcopy__(self, memo: dict[int, object]) -> ContinuousBatchingSimulator:
        """An independent copy of the engine state, for forking a replay. The config, latency model and
        ``on_advance`` hook are shared; every container is copied one level deep, which is all its numbers need:
        ``copy.deepcopy`` would walk each of them and made forking a large replay take seconds."""
        clone = copy.copy(self)
        memo[id(self)] = clone
        for name in ("_prompt", "_end_tokens", "_num_tokens", "_finish_step", "_first_token_step", "_slots",
                     "_waiting", "_pending", "_blocked", "_blocked_arrival", "_times", "_trace"):
            setattr(clone, name, getattr(self, name).copy())
        clone._batch = self._batch.copy() if self._batch is not None else None
        clone._followers = {request: waiting.copy() for request, waiting in self._followers.items()}
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
            advanced = self._advance(horizon)
            if self.on_advance is not None:
                self.on_advance(self)
            if not advanced:
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
            trace=self._trace.arrays(self._times) if self.record_trace else {},
        )

    # ---- read-only views ---------------------------------------------------------------------------
    @property
    def in_decode_mode(self) -> bool:
        """Whether the running requests are held in the decode mode (all decoding) rather than the slot matrix."""
        return self._batch is not None

    @property
    def free_kv_blocks(self) -> int:
        """Usable KV blocks not held by a running request, as the scheduler counts them step by step."""
        return self._free_blocks

    @property
    def held_kv_blocks(self) -> int:
        """KV blocks the running requests hold, recounted from each one's tokens in either representation
        (independently of ``free_kv_blocks``: the two add up to ``config.usable_kv_blocks``)."""
        if self._batch is not None:
            return self._batch.held_blocks(self.num_steps)
        return int(self._slots[BLOCKS].sum())

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

    def _advance(self, horizon: float) -> bool:
        """Take the next step or decode stretch; False if the horizon stops it before it starts."""
        if self._batch is None:
            if not self._fast_forward or not self._all_decoding():
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
        """Add a trace row for the next ``steps`` steps (``nan`` start or seconds: not priced yet)."""
        self._trace.add(start, seconds, self.num_steps + 1, steps, prefill_tokens, decode_seqs, running,
                        len(self._waiting), self._times.gap)

    # ---- general form: one step planned on the slot matrix -----------------------------------------
    def _step(self, horizon: float) -> bool:
        """Plan one step as vLLM would, price it, and apply it unless it ends after ``horizon``."""
        plan = plan_running(self.config, self._slots, self._free_blocks, len(self._waiting))
        if not plan.victims:
            plan_waiting(plan, self.config, self._waiting, self._watermark_blocks, num_tokens=self._num_tokens,
                         end_tokens=self._end_tokens, prompt=self._prompt)
        features = step_features(plan)
        if features[0] == 0 and features[2] == 0:
            raise SamullmError("simulated engine stalled: no request could be scheduled (KV cache too small?)")
        if not self._take_step(features, horizon, plan.slots.shape[1]):
            return False
        self._commit(plan)
        return True

    def _commit(self, plan: StepPlan) -> None:
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
