"""A step latency that is linear in the five step features: what ``samullm profile`` fits on a real engine.

On the CPU engine a step is dominated by per-step framework overhead, per-token projection work and
attention over the context, all linear in the features; on a GPU the same form fits one batch-size regime.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from samullm_lc.costmodel.latency.base import FEATURE_NAMES


class LinearLatencyModel(BaseModel):
    """seconds = intercept + sum(coefficient[f] * feature[f]), coefficients in seconds per unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intercept_seconds: float = Field(ge=0)
    coefficients: dict[str, float] = Field(description="Seconds per unit of each step feature.")
    per_request_seconds: float = Field(0.0, ge=0)
    _terms: tuple[tuple[int, float], ...] = PrivateAttr(())

    def model_post_init(self, __context: object) -> None:
        unknown = set(self.coefficients) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown step features {sorted(unknown)}; known: {FEATURE_NAMES}")
        self._terms = tuple(
            (i, self.coefficients[name]) for i, name in enumerate(FEATURE_NAMES) if self.coefficients.get(name)
        )

    def step_seconds(
        self,
        prefill_tokens: ArrayLike,
        prefill_seqs: ArrayLike,
        decode_seqs: ArrayLike,
        decode_context_tokens: ArrayLike,
        prefill_attention_pairs: ArrayLike,
    ) -> np.ndarray:
        """Seconds each step takes."""
        features = (prefill_tokens, prefill_seqs, decode_seqs, decode_context_tokens, prefill_attention_pairs)
        total = self.intercept_seconds
        for index, coefficient in self._terms:  # plain floats stay plain: the simulator calls this per step
            value = features[index]
            total = total + coefficient * (value if isinstance(value, (int, float, np.ndarray)) else np.asarray(value))
        return np.asarray(total, dtype=np.float64)
