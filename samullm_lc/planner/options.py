"""The ways one model can run on the cluster: tensor-parallel degree x data-parallel replicas, or half a GPU.

For every model the planner checks memory at each tensor-parallel degree with vLLM's accounting
(``memory.gpu_scheduler_config``: weights / TP, the activation reserve and a minimum KV cache must fit
each GPU) and builds a ``CostModel`` for a degree the first time an option needs it (the analytic GPU
latency model, or a measured profile of that degree). A model that fits at no degree raises
``DoesNotFitError`` naming the model and the memory it needs.

GPU sharing (beyond the paper, which forbids it): a small model may take half of one GPU's memory
(``memory_fraction`` 0.5) so two of them run on one GPU. Both engines then time-slice the GPU; we assume
each step takes ``SHARED_GPU_SLOWDOWN`` times as long as on a GPU of its own (``costmodel.latency.wrappers``).
This is an assumption, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from samullm_lc.costmodel.architecture import ModelArchitecture, resolve_architecture
from samullm_lc.costmodel.estimator import CostModel
from samullm_lc.costmodel.latency.base import IterationLatencyModel
from samullm_lc.costmodel.latency.wrappers import SHARED_GPU_SLOWDOWN, CachedLatency, SlowedLatency
from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.load import analytic_load_seconds
from samullm_lc.costmodel.memory import gpu_scheduler_config
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.errors import ConfigError, DoesNotFitError
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.workload import ModelSampling

SHARED_MEMORY_FRACTION = 0.5
SHARED_MAX_WEIGHT_SHARE = 0.25
"""Only models whose weights take at most this share of one GPU's memory are offered half a GPU."""


@dataclass(frozen=True, slots=True, order=True)
class EngineOption:
    """One execution plan shape: ``replicas`` engines of ``tp`` GPUs each, or one engine on half a GPU.

    ``memory`` below 1 is a whole-GPU engine that leaves the rest of its GPUs' memory to an engine loading
    beside it for the next stage (``preload.py``); unlike a ``shared`` engine it is not slowed, as that
    engine computes only once this one has stopped.
    """

    tp: int = 1
    replicas: int = 1
    shared: bool = False
    memory: float = 1.0
    num_gpus: float = field(init=False, compare=False, repr=False)  # GPUs occupied (0.5 for a shared engine)

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_gpus", 0.5 if self.shared else float(self.tp * self.replicas))

    @property
    def memory_fraction(self) -> float:
        """Share of each GPU's memory the engine may use."""
        return SHARED_MEMORY_FRACTION if self.shared else self.memory

    def label(self) -> str:
        """Short text, e.g. ``TP2x4DP``."""
        if self.shared:
            return "TP1 @50% of one GPU"
        share = f" @{self.memory:.0%} mem" if self.memory < 1.0 else ""
        return f"TP{self.tp}" + (f"x{self.replicas}DP" if self.replicas > 1 else "") + share


def option_for(tp: int, replicas: int, memory_fraction: float) -> EngineOption:
    """The option of an engine given by its plan: a TP1 engine at half the memory shares its GPU with another
    computing engine (time-sliced, ``shared``); any other share below 1 leaves room for an engine preloading
    beside it."""
    shared = tp == 1 and memory_fraction == SHARED_MEMORY_FRACTION
    return EngineOption(tp, replicas, shared, 1.0 if shared else memory_fraction)


@dataclass(slots=True)
class ModelEngines:
    """Everything the planner needs to run one model with any of its options."""

    model: str
    cluster: Cluster
    architecture: ModelArchitecture
    schedulers: dict[int, SchedulerConfig]  # per feasible TP degree
    shared_scheduler: SchedulerConfig | None
    load_seconds: dict[int, float]
    sampling: ModelSampling
    process_start_seconds: float = 0.0  # CPU: what an engine needing a new worker process pays before its load
    profile: EngineProfile | None = None
    output_lengths: OutputLengthDistribution | None = None
    _cost_models: dict[int, CostModel] = field(default_factory=dict)
    _latencies: dict[int, CachedLatency] = field(default_factory=dict)
    _partial: dict[tuple[int, float], SchedulerConfig] = field(default_factory=dict)

    @property
    def tps(self) -> tuple[int, ...]:
        """Tensor-parallel degrees at which the model fits."""
        return tuple(sorted(self.schedulers))

    def cost_model(self, tp: int) -> CostModel:
        """The cost model of one replica at degree ``tp`` (built on first use)."""
        if tp not in self._cost_models:
            profile = self.profile if self.profile is not None and self.profile.tensor_parallel_size == tp else None
            self._cost_models[tp] = CostModel(
                self.architecture if profile is None else self.model, self.cluster.spec, tp, profile=profile,
                output_lengths=self.output_lengths, topology=self.cluster.topology, scheduler=self.schedulers[tp],
            )
        return self._cost_models[tp]

    def scheduler(self, option: EngineOption) -> SchedulerConfig:
        """The engine limits of one replica under this option."""
        if option.shared:
            if self.shared_scheduler is None:
                raise DoesNotFitError(f"model {self.model} cannot take half a GPU of {self.cluster.hardware}")
            return self.shared_scheduler
        if option.memory < 1.0:
            return self.partial_scheduler(option.tp, option.memory)
        return self.schedulers[option.tp]

    def partial_scheduler(self, tp: int, memory: float) -> SchedulerConfig:
        """The limits of a replica at degree ``tp`` on a ``memory`` share of its GPUs (GPUs only);
        DoesNotFitError if the model and a minimum KV cache do not fit that share."""
        key = (tp, memory)
        if key not in self._partial:
            if self.cluster.spec.kind != "gpu":
                raise ConfigError(f"a share of the memory ({memory:.0%}) is for GPU engines; {self.model} runs on "
                                  f"{self.cluster.hardware}")
            self._partial[key] = gpu_scheduler_config(self.architecture, self.cluster.spec, tp, memory_fraction=memory)
        return self._partial[key]

    def latency(self, option: EngineOption) -> IterationLatencyModel:
        """The step latency of one replica under this option (one cached wrapper per degree)."""
        if option.tp not in self._latencies:
            self._latencies[option.tp] = CachedLatency(self.cost_model(option.tp).latency)
        latency = self._latencies[option.tp]
        return SlowedLatency(latency, SHARED_GPU_SLOWDOWN) if option.shared else latency

    def load(self, option: EngineOption) -> float:
        """Seconds to start the engines of this option (replicas load in parallel)."""
        return self.load_seconds[option.tp]

    def options(self, num_gpus: int, *, allow_replicas: bool, allow_sharing: bool) -> list[EngineOption]:
        """Every option that fits ``num_gpus`` GPUs."""
        options = []
        for tp in self.tps:
            max_replicas = num_gpus // tp if allow_replicas else min(1, num_gpus // tp)
            options.extend(EngineOption(tp, replicas) for replicas in range(1, max_replicas + 1))
        small = self.architecture.weight_bytes <= SHARED_MAX_WEIGHT_SHARE * self.cluster.spec.memory_bytes
        if allow_sharing and small and self.shared_scheduler is not None:
            options.append(EngineOption(1, 1, shared=True))
        return options


def build_model_engines(
    model: str,
    cluster: Cluster,
    *,
    profile: EngineProfile | None = None,
    output_lengths: OutputLengthDistribution | None = None,
    load_overrides: dict[int, float] | None = None,
) -> ModelEngines:
    """The feasible tensor-parallel degrees of ``model`` on ``cluster``; DoesNotFitError if there is none."""
    hardware = cluster.spec
    process_start = 0.0
    if hardware.kind == "cpu":
        schedulers, loads, architecture = _profiled(model, cluster, profile)
        process_start = (profile.process_start_seconds or 0.0) if profile is not None else 0.0
    else:  # GPU loads include the process start-up, as the analytic one does
        architecture = profile.architecture if profile is not None else resolve_architecture(model)
        schedulers, loads = _analytic(architecture, cluster)
        if profile is not None and profile.hardware == hardware.name and profile.tensor_parallel_size in schedulers:
            schedulers[profile.tensor_parallel_size] = profile.scheduler
            loads[profile.tensor_parallel_size] = profile.load_seconds + (profile.process_start_seconds or 0.0)
    shared = None
    if hardware.kind == "gpu":
        try:
            shared = gpu_scheduler_config(architecture, hardware, 1, memory_fraction=SHARED_MEMORY_FRACTION)
        except DoesNotFitError:
            shared = None
    loads.update({tp: s for tp, s in (load_overrides or {}).items() if tp in loads})
    lengths = output_lengths or (profile.output_lengths if profile is not None else None)
    max_model_len = min(s.max_model_len for s in schedulers.values())
    sampling = ModelSampling(
        max_model_len=max_model_len,
        flops_per_token=architecture.linear_flops_per_token,
        output_lengths=lengths or OutputLengthDistribution.sharegpt(),
    )
    return ModelEngines(
        model=model, cluster=cluster, architecture=architecture, schedulers=schedulers, shared_scheduler=shared,
        load_seconds=loads, sampling=sampling, profile=profile, output_lengths=output_lengths,
        process_start_seconds=process_start,
    )


def _analytic(architecture: ModelArchitecture, cluster: Cluster) -> tuple[dict[int, SchedulerConfig], dict[int, float]]:
    """Engine limits and load times at every degree where the model fits; the last DoesNotFitError if none."""
    schedulers: dict[int, SchedulerConfig] = {}
    failure: DoesNotFitError | None = None
    for tp in cluster.tp_degrees():
        if architecture.intermediate_size % tp or architecture.num_attention_heads % tp:
            continue
        try:
            schedulers[tp] = gpu_scheduler_config(architecture, cluster.spec, tp)
        except DoesNotFitError as exc:
            failure = exc
    if not schedulers:
        if failure is None:
            raise ConfigError(
                f"model {architecture.name}: no tensor-parallel degree in {cluster.tp_degrees()} divides its "
                f"attention heads and MLP width; use a cluster with other GPU counts"
            )
        raise DoesNotFitError(f"{failure} (cluster {cluster})")
    loads = {tp: analytic_load_seconds(architecture, cluster.spec, tp) for tp in schedulers}
    return schedulers, loads


def _profiled(model: str, cluster: Cluster, profile: EngineProfile | None
              ) -> tuple[dict[int, SchedulerConfig], dict[int, float], ModelArchitecture]:
    """A measured engine profile stands for the model at its degree (the CPU engine has no other source)."""
    cost_model = CostModel(model, cluster.spec, profile.tensor_parallel_size if profile else 1, profile=profile)
    tp = cost_model.tp
    if tp not in cluster.tp_degrees():
        raise ConfigError(f"the profile of {model} has TP={tp}, impossible on {cluster}; profile TP 1 instead")
    return {tp: cost_model.scheduler}, {tp: cost_model.load_seconds}, cost_model.architecture
