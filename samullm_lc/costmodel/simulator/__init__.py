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

The package, in the order a step goes through it:

- ``step_limited``: ``simulate`` (one engine, one call) and ``StepLimitedSimulator``;
- ``continuous_batching``: ``ContinuousBatchingSimulator`` (the engine's state, requests entering, the main
  loop and the clock, read-only views of its KV blocks and representation);
- ``general_form``: vLLM's running and waiting loops on the slot matrix, returning a ``StepPlan``;
- ``decode_mode`` and ``decode_batch``: the decode mode's steps and stretches, and its running batch;
- ``step_times``: the step-time ledger, which prices steps (now, or deferred and vectorised);
- ``result``: ``SimulationResult`` and the step trace.
"""

from samullm_lc.costmodel.simulator.continuous_batching import PRICING_BATCH, ContinuousBatchingSimulator
from samullm_lc.costmodel.simulator.result import SimulationResult
from samullm_lc.costmodel.simulator.step_limited import StepLimitedSimulator, simulate

__all__ = ["PRICING_BATCH", "ContinuousBatchingSimulator", "SimulationResult", "StepLimitedSimulator", "simulate"]
