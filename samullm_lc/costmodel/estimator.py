"""The cost model's answer: how long model M with plan P on hardware H takes for request set R.

Sampling then simulation (SamuLLM): output lengths are drawn from the model's empirical distribution,
then vLLM's continuous batching is simulated with a step-latency model. The latency comes from a
measured ``EngineProfile`` when there is one (always on the CPU engine), otherwise from the analytic GPU
model. Several samples give the spread that output-length uncertainty puts on the estimate.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field

from samullm_lc.costmodel.architecture import ModelArchitecture, resolve_architecture
from samullm_lc.costmodel.hardware import Hardware, get_hardware
from samullm_lc.costmodel.latency.base import IterationLatencyModel
from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.memory import gpu_scheduler_config
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.costmodel.simulator import simulate
from samullm_lc.errors import ConfigError, ProfileError
from samullm_lc.limits import OUTPUT_LENGTH_SAMPLES, REQUESTS_PER_ESTIMATE, SIMULATED_STEPS, TOKENS_PER_REQUEST


class Estimate(BaseModel):
    """Predicted time of one model's request set on one execution plan."""

    model_config = ConfigDict(extra="forbid")

    model: str
    hardware: str
    tensor_parallel_size: int
    num_requests: int
    seconds: float = Field(description="Median over output-length samples of the simulated run time.")
    seconds_min: float
    seconds_max: float
    samples_seconds: list[float]
    load_seconds: float = Field(description="Engine start time, not included in `seconds`.")
    mean_output_tokens: float
    latency_source: str = Field(description='"profile" (measured) or "analytic" (GPU model).')
    scheduler: SchedulerConfig


class CostModel:
    """Latency, limits, load time and output lengths for one (model, hardware, TP); estimates request sets."""

    def __init__(
        self,
        model: str | ModelArchitecture,
        hardware: str | Hardware = "cpu",
        tp: int = 1,
        *,
        profile: EngineProfile | None = None,
        output_lengths: OutputLengthDistribution | None = None,
        topology: str = "nvswitch",
        scheduler: SchedulerConfig | None = None,
    ):
        self.hardware = get_hardware(hardware)
        self.tp = tp
        if profile is not None:
            self._check_profile(profile)
            self.architecture = profile.architecture
            self.latency: IterationLatencyModel = profile.latency
            self.scheduler = scheduler or profile.scheduler
            self.load_seconds = profile.load_seconds
            self.latency_source = "profile"
            default_lengths = profile.output_lengths
        else:
            if self.hardware.kind == "cpu":
                raise ProfileError(
                    f"no profile for model {model!r} on the CPU engine: its speed is measured, not modelled. "
                    "Run `samullm profile` for it and pass --profile FILE."
                )
            from samullm_lc.costmodel.latency.analytic import AnalyticLatencyModel
            from samullm_lc.costmodel.load import analytic_load_seconds

            self.architecture = resolve_architecture(model)
            self.latency = AnalyticLatencyModel.create(self.architecture, self.hardware, tp, topology)
            self.scheduler = scheduler or gpu_scheduler_config(self.architecture, self.hardware, tp)
            self.load_seconds = analytic_load_seconds(self.architecture, self.hardware, tp)
            self.latency_source = "analytic"
            default_lengths = None
        self.output_lengths = output_lengths or default_lengths or OutputLengthDistribution.sharegpt()

    def _check_profile(self, profile: EngineProfile) -> None:
        if profile.hardware != self.hardware.name or profile.tensor_parallel_size != self.tp:
            raise ProfileError(
                f"the profile was measured on {profile.hardware} with TP={profile.tensor_parallel_size}, "
                f"not {self.hardware.name} with TP={self.tp}; profile this configuration or drop --profile"
            )

    def sample_output_tokens(
        self, input_tokens: np.ndarray, max_tokens: ArrayLike, rng: np.random.Generator
    ) -> np.ndarray:
        """One draw of every request's output length, clipped as vLLM would."""
        return self.output_lengths.sample(
            input_tokens.size, rng, max_tokens=max_tokens, input_lengths=input_tokens,
            max_model_len=self.scheduler.max_model_len,
        )

    def estimate(
        self,
        input_tokens: ArrayLike,
        max_tokens: ArrayLike,
        *,
        num_requests: int | None = None,
        fixed_output_tokens: ArrayLike | None = None,
        arrival_seconds: ArrayLike | None = None,
        num_samples: int = 5,
        seed: int = 0,
    ) -> Estimate:
        """Simulate the request set ``num_samples`` times with fresh output-length samples.

        ``input_tokens`` is one length or one per request; ``fixed_output_tokens`` skips sampling (requests
        that ignore EOS, or known lengths). Sizes are bounded (``samullm_lc/limits.py``): at most
        ``REQUESTS_PER_ESTIMATE`` requests, ``OUTPUT_LENGTH_SAMPLES`` samples and ``SIMULATED_STEPS`` engine
        steps per simulation, so an estimate stays under about 2 GB; beyond them, ``ConfigError``.
        """
        inputs = _token_counts(input_tokens, "input_tokens")
        max_tokens = _token_counts(max_tokens, "max_tokens")
        OUTPUT_LENGTH_SAMPLES.check(num_samples)
        if inputs.ndim == 0:
            if num_requests is None:
                raise ConfigError("give num_requests when input_tokens is a single length")
            inputs = np.full(REQUESTS_PER_ESTIMATE.check(num_requests), int(inputs))
        if inputs.size == 0:
            raise ConfigError("the request set is empty: give at least one request")
        REQUESTS_PER_ESTIMATE.check(inputs.size)
        rng = np.random.default_rng(seed)
        samples, means = [], []
        for _ in range(1 if fixed_output_tokens is not None else num_samples):
            if fixed_output_tokens is not None:
                outputs = np.broadcast_to(np.asarray(fixed_output_tokens, dtype=np.int64), inputs.shape)
            else:
                outputs = self.sample_output_tokens(inputs, max_tokens, rng)
            result = simulate(self.scheduler, self.latency, inputs, outputs, arrival_seconds,
                              step_limit=SIMULATED_STEPS)
            samples.append(result.total_seconds)
            means.append(float(result.output_tokens.mean()))
        return Estimate(
            model=self.architecture.name,
            hardware=self.hardware.name,
            tensor_parallel_size=self.tp,
            num_requests=int(inputs.size),
            seconds=float(np.median(samples)),
            seconds_min=float(min(samples)),
            seconds_max=float(max(samples)),
            samples_seconds=[float(s) for s in samples],
            load_seconds=self.load_seconds,
            mean_output_tokens=float(np.mean(means)),
            latency_source=self.latency_source,
            scheduler=self.scheduler,
        )


def _token_counts(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as int64 token counts, each 1 to ``TOKENS_PER_REQUEST``; ``ConfigError`` naming ``name`` if not."""
    try:
        counts = np.asarray(values, dtype=np.int64)
    except (OverflowError, TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be whole token counts of 1 to {TOKENS_PER_REQUEST.maximum:,}: {exc}") from None
    if counts.size:
        TOKENS_PER_REQUEST.check(int(counts.min()))
        TOKENS_PER_REQUEST.check(int(counts.max()))
    return counts
