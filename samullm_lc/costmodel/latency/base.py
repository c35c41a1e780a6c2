"""How long one engine step takes, as a function of what the step computes.

A step of vLLM's continuous batching runs one forward pass over a mix of prefill chunks and decode tokens.
Its shape is summarised by five numbers (per step; arrays give many steps at once):

- ``prefill_tokens``: prompt tokens processed (chunks of prefills, recomputation after preemption too);
- ``prefill_seqs``: sequences that have a prefill chunk in the step;
- ``decode_seqs``: sequences that decode one token;
- ``decode_context_tokens``: KV-cache tokens the decode sequences attend to, summed over them;
- ``prefill_attention_pairs``: (query, key) pairs of the prefill chunks' attention, summed
  (a chunk of c tokens after k cached ones has c * k + c * (c + 1) / 2 pairs).

Latency models are bound to one (model, hardware, tensor-parallel degree) and never schedule anything:
the simulator decides the batch, the latency model prices it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

FEATURE_NAMES = (
    "prefill_tokens",
    "prefill_seqs",
    "decode_seqs",
    "decode_context_tokens",
    "prefill_attention_pairs",
)

StepFeatures = tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike, ArrayLike]
"""The five arguments of ``IterationLatencyModel.step_seconds`` as one tuple, in ``FEATURE_NAMES`` order."""


@runtime_checkable
class IterationLatencyModel(Protocol):
    """Prices engine steps in seconds; vectorised over steps."""

    per_request_seconds: float
    """Engine time spent admitting one request (tokenising, adding it), outside any step."""

    def step_seconds(
        self,
        prefill_tokens: ArrayLike,
        prefill_seqs: ArrayLike,
        decode_seqs: ArrayLike,
        decode_context_tokens: ArrayLike,
        prefill_attention_pairs: ArrayLike,
    ) -> np.ndarray:
        """Seconds each step takes; every argument broadcasts to the same shape."""
        ...


def prefill_pairs(chunk_tokens: ArrayLike, cached_tokens: ArrayLike) -> np.ndarray:
    """Attention (query, key) pairs of prefill chunks of ``chunk_tokens`` after ``cached_tokens`` cached ones."""
    c = np.asarray(chunk_tokens, dtype=np.float64)
    return c * np.asarray(cached_tokens, dtype=np.float64) + c * (c + 1.0) / 2.0
