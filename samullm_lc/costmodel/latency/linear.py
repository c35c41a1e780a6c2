"""A step latency that is linear in the five step features: what ``samullm profile`` fits on a real engine.

On the CPU engine a step is dominated by per-step framework overhead, per-token projection work and
attention over the context, all linear in the features; on a GPU the same form fits one batch-size regime.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from samullm_lc.costmodel.latency.base import FEATURE_NAMES
from samullm_lc.errors import ConfigError
from samullm_lc.validated import ValidatedModel


class LinearLatencyModel(ValidatedModel):
    """seconds = intercept + sum(coefficient[f] * feature[f]), coefficients in seconds per unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intercept_seconds: float = Field(ge=0)
    coefficients: dict[str, float] = Field(description="Seconds per unit of each step feature.")
    per_request_seconds: float = Field(0.0, ge=0)
    _terms: tuple[tuple[int, float], ...] = PrivateAttr(())

    def model_post_init(self, context: object, /) -> None:
        unknown = set(self.coefficients) - set(FEATURE_NAMES)
        if unknown:
            raise ConfigError(f"unknown step features {sorted(unknown)}; known: {FEATURE_NAMES}")
        self._terms = tuple(
            (i, self.coefficients[name]) for i, name in enumerate(FEATURE_NAMES) if self.coefficients.get(name)
        )

    def step_seconds(self, prefill_tokens: ArrayLike, prefill_seqs: ArrayLike, decode_seqs: ArrayLike,
                     decode_context_tokens: ArrayLike, prefill_attention_pairs: ArrayLike) -> np.ndarray:
        """Seconds each step takes."""
        features = (prefill_tokens, prefill_seqs, decode_seqs, decode_context_tokens, prefill_attention_pairs)
        total = self.intercept_seconds
        for index, coefficient in self._terms:  # plain floats stay plain: the simulator calls this per step
            value = features[index]
            total = total + coefficient * (value if isinstance(value, (int, float, np.ndarray)) else np.asarray(value))
        return np.asarray(total, dtype=np.float64)


class FitQuality(BaseModel):
    """How well a fitted latency model reproduces the steps it was fitted on."""

    num_steps: int
    r2: float
    median_relative_error: float = Field(description="Median |predicted - measured| / measured over steps.")
    total_relative_error: float = Field(description="(sum predicted - sum measured) / sum measured.")


def fit_linear_latency(
    features: np.ndarray, seconds: np.ndarray, *, per_request_seconds: float = 0.0
) -> tuple[LinearLatencyModel, FitQuality]:
    """Fit non-negative coefficients to measured steps (rows of FEATURE_NAMES features) by least squares.

    Least squares on absolute seconds keeps the sum of step times unbiased, which is what a total-time
    estimate needs; non-negativity keeps the model monotone (more work never costs less).
    """
    from scipy.optimize import nnls

    features = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURE_NAMES))
    seconds = np.asarray(seconds, dtype=np.float64)
    if features.shape[0] < len(FEATURE_NAMES) + 1:
        raise ConfigError(f"need at least {len(FEATURE_NAMES) + 1} measured steps to fit, got {features.shape[0]}")
    design = np.hstack([np.ones((features.shape[0], 1)), features])
    scale = np.abs(design).max(axis=0)
    scale[scale == 0] = 1.0
    solution, _ = nnls(design / scale, seconds)
    solution = solution / scale
    model = LinearLatencyModel(
        intercept_seconds=float(solution[0]),
        coefficients={name: float(c) for name, c in zip(FEATURE_NAMES, solution[1:], strict=True)},
        per_request_seconds=per_request_seconds,
    )
    predicted = design @ solution
    residual = seconds - predicted
    quality = FitQuality(
        num_steps=int(seconds.size),
        r2=float(1 - (residual**2).sum() / max(((seconds - seconds.mean()) ** 2).sum(), 1e-30)),
        median_relative_error=float(np.median(np.abs(residual) / seconds)),
        total_relative_error=float(predicted.sum() / seconds.sum() - 1),
    )
    return model, quality
