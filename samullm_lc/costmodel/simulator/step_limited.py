"""One-call simulation: ``simulate``, and ``StepLimitedSimulator``, which bounds the steps a run may take."""

from __future__ import annotations

from collections.abc import Sequence

from numpy.typing import ArrayLike

from samullm_lc.costmodel.latency.base import IterationLatencyModel
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.costmodel.simulator.continuous_batching import ContinuousBatchingSimulator
from samullm_lc.costmodel.simulator.result import SimulationResult
from samullm_lc.limits import Limit


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
