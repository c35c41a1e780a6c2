"""Step-latency models that wrap another: slowed by GPU sharing, scaled for a scale model, cached for a replay.

Each wrapper keeps the wrapped model's ``per_request_seconds`` and changes one thing, in ``_seconds``: the
step's features on the way in (``ScaledLatency``), its seconds on the way out (``SlowedLatency``), or how
they are computed (``CachedLatency``).

``SHARED_GPU_SLOWDOWN`` is an assumption, not a measurement: two engines time-slicing one GPU each take that
many times as long per step as on a GPU of their own (decode steps of a large batch are bound by memory
bandwidth, which the two engines split; the slack of kernel launches and CPU scheduling gives a little back).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from numpy.typing import ArrayLike

from samullm_lc.costmodel.latency.base import IterationLatencyModel, StepFeatures

SHARED_GPU_SLOWDOWN = 1.8


class LatencyWrapper(ABC):
    """An ``IterationLatencyModel`` defined by the one it wraps; subclasses price a step in ``_seconds``."""

    def __init__(self, inner: IterationLatencyModel) -> None:
        self.inner = inner
        self.per_request_seconds = inner.per_request_seconds

    def step_seconds(self, prefill_tokens: ArrayLike, prefill_seqs: ArrayLike, decode_seqs: ArrayLike,
                     decode_context_tokens: ArrayLike, prefill_attention_pairs: ArrayLike) -> np.ndarray:
        """Seconds each step takes; every argument broadcasts to the same shape."""
        return self._seconds((prefill_tokens, prefill_seqs, decode_seqs, decode_context_tokens, prefill_attention_pairs))

    @abstractmethod
    def _seconds(self, features: StepFeatures) -> np.ndarray:
        """Seconds each step takes, from the five step features in ``step_seconds``'s order."""


class SlowedLatency(LatencyWrapper):
    """A step-latency model whose steps take ``factor`` times as long (an engine sharing its GPU)."""

    def __init__(self, inner: IterationLatencyModel, factor: float) -> None:
        super().__init__(inner)
        self.factor = factor

    def _seconds(self, features: StepFeatures) -> np.ndarray:
        """The inner model's seconds times the slowdown factor."""
        return np.asarray(self.inner.step_seconds(*features), dtype=np.float64) * self.factor


class ScaledLatency(LatencyWrapper):
    """Prices a step of the scale model as the full engine's step with ``factor`` times its features."""

    def __init__(self, inner: IterationLatencyModel, factor: int) -> None:
        super().__init__(inner)
        self.factor = factor

    def _seconds(self, features: StepFeatures) -> np.ndarray:
        """Seconds of the full engine's step that the scaled step stands for."""
        k = self.factor
        return self.inner.step_seconds(*(np.asarray(v) * k for v in features))


class CachedLatency(LatencyWrapper):
    """The wrapped step latency, answered from a cache when only the context and attention terms vary.

    Both latency models of the package are linear in the decode context and the prefill attention pairs
    once the token and sequence counts are fixed; the wrapper checks that on probe steps, caches the rest
    per (prefill tokens, prefill sequences, decode sequences), and otherwise defers to the wrapped model.
    The simulator prices steps one by one whenever the clock matters (a plan's replay), which this speeds
    up several times.
    """

    _PROBE = (64, 1, 8)

    def __init__(self, inner: IterationLatencyModel) -> None:
        super().__init__(inner)
        self._base: dict[tuple[int, int, int], float] = {}
        a, b, c = self._PROBE
        zero = self._call(a, b, c, 0.0, 0.0)
        self._context = (self._call(a, b, c, 1000.0, 0.0) - zero) / 1000.0
        self._pairs = (self._call(a, b, c, 0.0, 1000.0) - zero) / 1000.0
        self.linear = all(
            abs(self._call(p, q, r, x, y) - (self._call(p, q, r, 0.0, 0.0) + self._pairs * y + self._context * x))
            <= 1e-9 * max(1e-6, self._call(p, q, r, x, y))
            for p, q, r, x, y in ((512, 2, 100, 3e4, 1e5), (0, 0, 256, 1.2e5, 0.0), (2048, 1, 0, 0.0, 2e6))
        )

    def _call(self, p: float, q: float, r: float, x: float, y: float) -> float:
        return float(np.asarray(self.inner.step_seconds(p, q, r, x, y)))

    def _seconds(self, features: StepFeatures) -> np.ndarray:
        """Seconds each step takes, as the wrapped model gives them."""
        prefill_tokens, prefill_seqs, decode_seqs, decode_context_tokens, prefill_attention_pairs = features
        counts = (prefill_tokens, prefill_seqs, decode_seqs)
        if not self.linear or not all(_is_number(v) for v in counts):
            return self.inner.step_seconds(*features)
        key = (int(prefill_tokens), int(prefill_seqs), int(decode_seqs))
        base = self._base.get(key)
        if base is None:
            base = self._base[key] = self._call(*key, 0.0, 0.0)
        if _is_number(decode_context_tokens) and _is_number(prefill_attention_pairs):
            if base == 0.0:
                return np.float64(0.0)
            return np.float64(base + self._pairs * float(prefill_attention_pairs)
                              + self._context * float(decode_context_tokens))
        seconds = (base + self._pairs * np.asarray(prefill_attention_pairs, dtype=np.float64)
                   + self._context * np.asarray(decode_context_tokens, dtype=np.float64))
        return seconds if base else np.zeros_like(seconds)


def _is_number(value: ArrayLike) -> bool:
    """Whether ``value`` is one number; plain ints and floats (the simulator's steps) skip numpy's slower check."""
    return isinstance(value, (int, float, np.number)) or np.ndim(value) == 0
