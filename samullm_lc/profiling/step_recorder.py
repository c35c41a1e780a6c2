"""Time every step of an in-process vLLM engine and read the batch its scheduler chose: what ``samullm profile``
fits the step-latency model to.

Works on the in-process engine only (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as the CPU engine runs here): the
recorder patches the scheduler and the engine of this process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from samullm_lc.costmodel.latency.base import FEATURE_NAMES
from samullm_lc.errors import EngineError

if TYPE_CHECKING:
    from vllm import LLM


@dataclass(slots=True)
class StepRecord:
    """One engine step: its batch shape (the five latency features) and its wall time."""

    features: tuple[int, int, int, int, float]
    seconds: float


@dataclass
class StepRecorder:
    """Records every step of an in-process engine while installed (a context manager).

    It wraps the scheduler's ``schedule`` to read the batch it chose (from the requests' computed-token
    counts) and the engine's ``step`` to time the whole step, output processing included.
    """

    llm: LLM
    steps: list[StepRecord] = field(default_factory=list)
    _pending_shape: tuple[int, int, int, int, float] | None = None

    def __enter__(self) -> Self:
        client = self.llm.llm_engine.engine_core
        core = getattr(client, "engine_core", None)
        if core is None:
            raise EngineError("StepRecorder needs the in-process engine: set VLLM_ENABLE_V1_MULTIPROCESSING=0")
        self._scheduler = core.scheduler
        self._original_schedule = self._scheduler.schedule
        self._original_step = self.llm.llm_engine.step
        self._scheduler.schedule = self._schedule
        self.llm.llm_engine.step = self._step
        return self

    def __exit__(self, *exc_info: object) -> None:
        del self._scheduler.schedule  # drop the instance attributes: the class methods show through again
        del self.llm.llm_engine.step

    def _schedule(self, *args: Any, **kwargs: Any) -> Any:
        output = self._original_schedule(*args, **kwargs)
        requests = self._scheduler.requests
        prefill_tokens = prefill_seqs = decode_seqs = decode_context = 0
        pairs = 0.0
        for request_id, scheduled in output.num_scheduled_tokens.items():
            request = requests[request_id]
            before = request.num_computed_tokens - scheduled  # the scheduler already advanced it
            if scheduled == 1 and request.num_tokens - before == 1:
                decode_seqs += 1
                decode_context += before + 1
            else:
                prefill_tokens += scheduled
                prefill_seqs += 1
                pairs += scheduled * before + scheduled * (scheduled + 1) / 2
        self._pending_shape = (prefill_tokens, prefill_seqs, decode_seqs, decode_context, pairs)
        return output

    def _step(self) -> Any:
        self._pending_shape = None
        start = time.perf_counter()
        outputs = self._original_step()
        seconds = time.perf_counter() - start
        if self._pending_shape is not None and any(self._pending_shape):
            self.steps.append(StepRecord(self._pending_shape, seconds))
        return outputs

    def feature_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """The recorded steps as arrays (see ``step_arrays``)."""
        return step_arrays(self.steps)


def step_arrays(steps: list[StepRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(steps x features) array in FEATURE_NAMES order, and the step seconds."""
    features = np.array([s.features for s in steps], dtype=np.float64).reshape(-1, len(FEATURE_NAMES))
    return features, np.array([s.seconds for s in steps], dtype=np.float64)
