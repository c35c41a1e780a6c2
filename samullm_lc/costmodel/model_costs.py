"""What an engine of one model costs on one hardware: its limits, step latency and load time per replica.

One place decides where each number comes from, for the planner (``planner.options``) and the simulated
backend (``runtime.backends.sim_backend``) alike: a measured ``EngineProfile`` stands for the model at the
tensor-parallel degree and hardware it was measured on (on the CPU engine it is the only source); any other
degree, and any share of the memory below 1, is priced by the analytic GPU model (``memory.gpu_scheduler_config``,
``AnalyticLatencyModel``, ``analytic_load_seconds``). An engine that time-slices its GPU with another
computing engine takes ``SHARED_GPU_SLOWDOWN`` times as long per step.
"""

from __future__ import annotations

from samullm_lc.costmodel.architecture import ModelArchitecture, resolve_architecture
from samullm_lc.costmodel.estimator import CostModel
from samullm_lc.costmodel.hardware import Hardware
from samullm_lc.costmodel.latency.base import IterationLatencyModel
from samullm_lc.costmodel.latency.wrappers import SHARED_GPU_SLOWDOWN, CachedLatency, SlowedLatency
from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.load import analytic_load_seconds
from samullm_lc.costmodel.memory import gpu_scheduler_config
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.errors import ConfigError


class ModelCosts:
    """Limits, step latency and load time of one replica of ``model`` on ``hardware`` at any tensor-parallel
    degree and memory share (each computed on first use and kept).

    On the CPU engine every number comes from ``profile`` (``ProfileError`` without one); on GPUs from the
    profile at its degree when it was measured on this hardware, else from the analytic model.
    """

    def __init__(self, model: str, hardware: Hardware, *, topology: str = "nvswitch",
                 profile: EngineProfile | None = None,
                 output_lengths: OutputLengthDistribution | None = None) -> None:
        self.model = model
        self.hardware = hardware
        self.topology = topology
        self.profile = profile
        self.output_lengths = output_lengths  # overrides the profile's and the default distribution
        self._cost_models: dict[int, CostModel] = {}
        self._latencies: dict[int, CachedLatency] = {}
        self._schedulers: dict[tuple[int, float], SchedulerConfig] = {}
        if hardware.kind == "cpu":  # ProfileError without a profile, before any catalogue look-up
            self.architecture: ModelArchitecture = self.cost_model(profile.tensor_parallel_size if profile else 1
                                                                   ).architecture
        else:
            self.architecture = profile.architecture if profile is not None else resolve_architecture(model)

    @property
    def process_start_seconds(self) -> float:
        """What a CPU engine needing a new worker process pays before its load (a GPU load includes it)."""
        if self.hardware.kind == "cpu" and self.profile is not None:
            return self.profile.process_start_seconds or 0.0
        return 0.0

    def output_length_distribution(self) -> OutputLengthDistribution:
        """The model's output lengths: the override, else the profile's, else ShareGPT's."""
        profiled = self.profile.output_lengths if self.profile is not None else None
        return self.output_lengths or profiled or OutputLengthDistribution.sharegpt()

    def cost_model(self, tp: int) -> CostModel:
        """The cost model of one replica at degree ``tp``: the profile's if measured at that degree."""
        if tp not in self._cost_models:
            profile = self.profile if self.profile is not None and self.profile.tensor_parallel_size == tp else None
            self._cost_models[tp] = CostModel(
                self.architecture if profile is None and self.hardware.kind == "gpu" else self.model, self.hardware,
                tp, profile=profile, output_lengths=self.output_lengths, topology=self.topology,
            )
        return self._cost_models[tp]

    def scheduler(self, tp: int, memory_fraction: float = 1.0) -> SchedulerConfig:
        """The engine limits of one replica on ``tp`` devices holding ``memory_fraction`` of each one's memory;
        ``DoesNotFitError`` if the model and a minimum KV cache do not fit it. A share below 1 is for GPUs only."""
        key = (tp, memory_fraction)
        if key not in self._schedulers:
            if memory_fraction < 1.0 and self.hardware.kind != "gpu":
                raise ConfigError(f"a share of the memory ({memory_fraction:.0%}) is for GPU engines; {self.model} "
                                  f"runs on {self.hardware.name}")
            if self.hardware.kind == "cpu":
                self._schedulers[key] = self.cost_model(tp).scheduler
            elif memory_fraction >= 1.0 and self._profiled(tp):
                self._schedulers[key] = self.profile.scheduler  # type: ignore[union-attr]
            else:
                self._schedulers[key] = gpu_scheduler_config(self.architecture, self.hardware, tp,
                                                             memory_fraction=memory_fraction)
        return self._schedulers[key]

    def latency(self, tp: int, *, time_sliced: bool = False) -> IterationLatencyModel:
        """The step latency of one replica at degree ``tp`` (one cached wrapper per degree), slowed by
        ``SHARED_GPU_SLOWDOWN`` when it time-slices its GPU with another computing engine."""
        if tp not in self._latencies:
            self._latencies[tp] = CachedLatency(self.cost_model(tp).latency)
        latency = self._latencies[tp]
        return SlowedLatency(latency, SHARED_GPU_SLOWDOWN) if time_sliced else latency

    def load_seconds(self, tp: int) -> float:
        """Seconds to start one replica at degree ``tp``: model load, and on GPUs the process start-up."""
        if self.hardware.kind == "cpu":
            return self.cost_model(tp).load_seconds
        if self._profiled(tp):
            return self.profile.load_seconds + (self.profile.process_start_seconds or 0.0)  # type: ignore[union-attr]
        return analytic_load_seconds(self.architecture, self.hardware, tp)

    def _profiled(self, tp: int) -> bool:
        """Whether the profile was measured at degree ``tp`` on this hardware."""
        return (self.profile is not None and self.profile.hardware == self.hardware.name
                and self.profile.tensor_parallel_size == tp)
