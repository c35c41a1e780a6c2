"""The general form's step planning: vLLM's running and waiting loops over a dense matrix of running slots.

It serves any state, in particular requests whose prefill is split over several steps. The functions here
only choose the step (a ``StepPlan``) and read its shape; the simulator prices the step and applies it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from samullm_lc.costmodel.scheduler_config import SchedulerConfig

# Rows of the running-slot matrix: one column per running request, in vLLM's running order.
ID, COMPUTED, TOKENS, END, PROMPT, BLOCKS = range(6)


def slot_matrix(ids: np.ndarray, computed: np.ndarray | int, tokens: np.ndarray, end_tokens: np.ndarray,
                prompt: np.ndarray, blocks: np.ndarray | list[int]) -> np.ndarray:
    """Running-slot columns for the requests ``ids``, one row per field (``ID`` ... ``BLOCKS``)."""
    slots = np.empty((6, ids.size), np.int64)
    slots[ID] = ids
    slots[COMPUTED] = computed
    slots[TOKENS] = tokens
    slots[END] = end_tokens
    slots[PROMPT] = prompt
    slots[BLOCKS] = blocks
    return slots


@dataclass(slots=True)
class StepPlan:
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


def step_features(plan: StepPlan) -> tuple[int, int, int, int, float]:
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


def plan_running(config: SchedulerConfig, slots: np.ndarray, free_blocks: int, num_waiting: int) -> StepPlan:
    """Schedule the RUNNING requests; blocks running short preempt from the tail (vLLM's FCFS rule)."""
    cfg = config
    computed = slots[COMPUTED]
    need = slots[TOKENS] - computed
    if cfg.long_prefill_token_threshold and need.size + num_waiting > 1:
        need = np.minimum(need, cfg.long_prefill_token_threshold)
    budget = cfg.max_num_batched_tokens
    total_need = int(need.sum())
    scheduled = need if total_need <= budget else np.clip(budget - (np.cumsum(need) - need), 0, need)
    blocks_after = np.where(scheduled > 0, -(-(computed + scheduled) // cfg.block_size), slots[BLOCKS])
    extra = int(blocks_after.sum()) - int(slots[BLOCKS].sum())
    if extra > free_blocks:
        return _plan_running_with_preemption(config, slots, free_blocks, need.tolist())
    planned = slots.copy()
    planned[BLOCKS] = blocks_after
    return StepPlan(planned, scheduled, free_blocks - extra, budget - min(total_need, budget), [])


def _plan_running_with_preemption(config: SchedulerConfig, slots: np.ndarray, free_blocks: int,
                                  need: list[int]) -> StepPlan:
    """vLLM's running loop when blocks run short: preempt from the tail until each request fits."""
    cfg = config
    held = slots[BLOCKS].tolist()
    computed = slots[COMPUTED].tolist()
    ids = slots[ID].tolist()
    kept = len(ids)  # slots [0, kept) are still running
    free, budget = free_blocks, cfg.max_num_batched_tokens
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
    planned = slots[:, :kept].copy()
    planned[BLOCKS] = blocks_after
    return StepPlan(planned, np.asarray(scheduled, np.int64), free, budget, victims)


def plan_waiting(plan: StepPlan, config: SchedulerConfig, waiting: deque[int], watermark_blocks: int, *,
                 num_tokens: np.ndarray, end_tokens: np.ndarray, prompt: np.ndarray) -> None:
    """Admit WAITING requests in order while budget, max_num_seqs and KV blocks allow (``num_tokens``,
    ``end_tokens`` and ``prompt`` are the per-request lengths, indexed by id)."""
    cfg = config
    running = plan.slots.shape[1]
    if not waiting or plan.budget <= 0 or running >= cfg.max_num_seqs:
        return
    threshold = cfg.long_prefill_token_threshold if running + len(waiting) > 1 else 0
    admitted: list[int] = []
    scheduled: list[int] = []
    blocks: list[int] = []
    for request in waiting:
        if plan.budget <= 0 or running + len(admitted) >= cfg.max_num_seqs:
            break
        tokens = int(num_tokens[request])
        watermark = watermark_blocks if running or admitted else 0
        if cfg.blocks_for(tokens) + watermark > plan.free_blocks:
            break
        new = min(tokens, threshold) if threshold else tokens
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
    columns = slot_matrix(new_ids, 0, num_tokens[new_ids], end_tokens[new_ids], prompt[new_ids], blocks)
    plan.slots = np.concatenate([plan.slots, columns], axis=1)
    plan.scheduled = np.concatenate([plan.scheduled, scheduled])
    plan.num_admitted = new_ids.size
