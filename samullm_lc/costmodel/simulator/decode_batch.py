"""The decode mode's running batch: every running request decodes, so a step changes no per-request state.

A decoding request gains one computed token per step, so it is stored as ``computed - step``, a constant:
a min-heap names the requests that finish, counts of offsets modulo the block size give the KV blocks a
step allocates, and scheduling a step is plain Python on scalars. ``plan_whole_admissions`` chooses the
waiting requests such a step admits.
"""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from samullm_lc.costmodel.scheduler_config import SchedulerConfig


class DecodeBatch:
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

    def copy(self) -> DecodeBatch:
        """An independent copy (its containers hold numbers and tuples, so shallow copies will do)."""
        clone = DecodeBatch.__new__(DecodeBatch)
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

    def held_blocks(self, step: int) -> int:
        """KV blocks all requests hold after ``step`` steps."""
        return sum(-(-(offset + step) // self.block_size) for offset in self.offsets.values())

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


def plan_whole_admissions(config: SchedulerConfig, waiting: deque[int], num_tokens: np.ndarray, watermark_blocks: int,
                          running: int, free: int) -> tuple[list[tuple[int, int]], int] | None:
    """Waiting requests a decode-mode step admits, as ``(id, num_tokens)``, and the blocks left free
    (``num_tokens``: each request's prompt and generated tokens, indexed by id; ``free``: blocks free once the
    running requests have theirs).

    None when an admitted request would get only a chunk of its prompt: the general form plans that step.
    """
    cfg = config
    budget = cfg.max_num_batched_tokens - running
    if not waiting or budget <= 0 or running >= cfg.max_num_seqs:
        return [], free
    threshold = cfg.long_prefill_token_threshold if running + len(waiting) > 1 else 0
    block_size = cfg.block_size
    admitted: list[tuple[int, int]] = []
    for request in waiting:
        if budget <= 0 or running + len(admitted) >= cfg.max_num_seqs:
            break
        tokens = int(num_tokens[request])
        watermark = watermark_blocks if running or admitted else 0
        if -(-tokens // block_size) + watermark > free:
            break
        new = min(tokens, threshold) if threshold else tokens
        if not cfg.enable_chunked_prefill and new > budget:
            break
        if min(new, budget) < tokens:
            return None
        admitted.append((request, tokens))
        free -= -(-tokens // block_size)
        budget -= tokens
    return admitted, free
