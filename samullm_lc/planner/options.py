"""The ways one model can run on the cluster: tensor-parallel degree x data-parallel replicas, or part of a GPU.

For every model the planner checks memory at each tensor-parallel degree with vLLM's accounting
(``memory.gpu_scheduler_config``: weights / TP, the activation reserve and a minimum KV cache must fit
each GPU) and prices each option with the model's ``costmodel.model_costs.ModelCosts`` (the analytic GPU
model, or a measured profile of that degree). A model that fits at no degree raises ``DoesNotFitError``
naming the model and the memory it needs.

GPU sharing (beyond the paper, which forbids it): a small model may take half of one GPU's memory
(``SHARED_MEMORY_FRACTION``) so two of them run on one GPU. Both engines then time-slice the GPU
(``time_sliced``); we assume each step takes ``SHARED_GPU_SLOWDOWN`` times as long as on a GPU of its own
(``costmodel.latency.wrappers``). This is an assumption, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from samullm_lc.costmodel.architecture import ModelArchitecture
from samullm_lc.costmodel.latency.base import IterationLatencyModel
from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.memory import gpu_scheduler_config
from samullm_lc.costmodel.model_costs import ModelCosts
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.errors import ConfigError, DoesNotFitError
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.plan import ExecutionPlan
from samullm_lc.planner.workload import ModelSampling

SHARED_MEMORY_FRACTION = 0.5
"""The share of one GPU's memory a time-sliced engine the planner offers takes (two per GPU)."""
SHARED_MAX_WEIGHT_SHARE = 0.25
"""Only models whose weights take at most this share of one GPU's memory are offered half a GPU."""


@dataclass(frozen=True, slots=True, order=True)
class EngineOption:
    """One execution plan shape: ``replicas`` engines of ``tp`` GPUs each, or one engine time-slicing a GPU.

    ``memory`` is the share of each GPU's memory the engines may use. A ``time_sliced`` engine computes on its
    GPU beside another one and is slowed; a whole-GPU engine at ``memory`` below 1 leaves the rest of its GPUs'
    memory to an engine loading beside it for the next stage (``preload.py``) and is not slowed, as that
    engine computes only once this one has stopped.
    """

    tp: int = 1
    replicas: int = 1
    time_sliced: bool = False
    memory: float = 1.0
    num_gpus: float = field(init=False, compare=False, repr=False)  # GPUs occupied (its share for a time-sliced one)

    def __post_init__(self) -> None:
        if self.time_sliced and self.memory >= 1.0:
            object.__setattr__(self, "memory", SHARED_MEMORY_FRACTION)
        object.__setattr__(self, "num_gpus", self.memory if self.time_sliced else float(self.tp * self.replicas))

    @property
    def memory_fraction(self) -> float:
        """Share of each GPU's memory the engine may use."""
        return self.memory

    def label(self) -> str:
        """Short text, e.g. ``TP2x4DP``."""
        if self.time_sliced:
            return f"TP1 @{self.memory:.0%} of one GPU"
        share = f" @{self.memory:.0%} mem" if self.memory < 1.0 else ""
        return f"TP{self.tp}" + (f"x{self.replicas}DP" if self.replicas > 1 else "") + share


def option_for(plan: ExecutionPlan) -> EngineOption:
    """The option an execution plan runs its model with."""
    return EngineOption(plan.tp, plan.replicas, plan.time_sliced, plan.memory_fraction)


@dataclass(slots=True)
class ModelOptions:
    """Everything the planner needs to run one model with any of its options: the feasible degrees, their
    limits and load times, and the model's ``ModelCosts`` pricing each option."""

    costs: ModelCosts
    cluster: Cluster
    schedulers: dict[int, SchedulerConfig]  # per feasible TP degree, on whole GPUs
    load_seconds: dict[int, float]  # per feasible TP degree (measured loads override the cost model's)
    sampling: ModelSampling
    can_time_slice: bool  # a TP1 engine fits ``SHARED_MEMORY_FRACTION`` of one GPU

    @property
    def model(self) -> str:
        """The model these options run."""
        return self.costs.model

    @property
    def architecture(self) -> ModelArchitecture:
        """The model's architecture (sizes, weights)."""
        return self.costs.architecture

    @property
    def process_start_seconds(self) -> float:
        """CPU: what an engine needing a new worker process pays before its load."""
        return self.costs.process_start_seconds

    @property
    def tps(self) -> tuple[int, ...]:
        """Tensor-parallel degrees at which the model fits."""
        return tuple(sorted(self.schedulers))

    def scheduler(self, option: EngineOption) -> SchedulerConfig:
        """The engine limits of one replica under this option; DoesNotFitError if its memory share is too small
        for the model and a minimum KV cache."""
        if option.time_sliced and option.memory == SHARED_MEMORY_FRACTION and not self.can_time_slice:
            raise DoesNotFitError(f"model {self.model} cannot take half a GPU of {self.cluster.hardware}")
        if option.memory < 1.0:
            return self.costs.scheduler(option.tp, option.memory)
        return self.schedulers[option.tp]

    def latency(self, option: EngineOption) -> IterationLatencyModel:
        """The step latency of one replica under this option."""
        return self.costs.latency(option.tp, time_sliced=option.time_sliced)

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
        if allow_sharing and small and self.can_time_slice:
            options.append(EngineOption(1, 1, time_sliced=True))
        return options


def build_model_options(
    model: str,
    cluster: Cluster,
    *,
    profile: EngineProfile | None = None,
    output_lengths: OutputLengthDistribution | None = None,
    load_overrides: dict[int, float] | None = None,
) -> ModelOptions:
    """The feasible tensor-parallel degrees of ``model`` on ``cluster``; DoesNotFitError if there is none."""
    costs = ModelCosts(model, cluster.spec, topology=cluster.topology, profile=profile, output_lengths=output_lengths)
    if cluster.spec.kind == "cpu":
        tps = _profiled_degree(costs, cluster)
    else:
        tps = _fitting_degrees(costs, cluster)
    schedulers = {tp: costs.scheduler(tp) for tp in tps}
    extra_read = cluster.weight_read_extra_seconds(costs.architecture.weight_bytes)
    loads = {tp: costs.load_seconds(tp) + extra_read for tp in tps}
    loads.update({tp: s for tp, s in (load_overrides or {}).items() if tp in loads})
    can_time_slice = False
    if cluster.spec.kind == "gpu":
        try:
            costs.scheduler(1, SHARED_MEMORY_FRACTION)
            can_time_slice = True
        except DoesNotFitError:
            pass
    sampling = ModelSampling(
        max_model_len=min(s.max_model_len for s in schedulers.values()),
        flops_per_token=costs.architecture.linear_flops_per_token,
        output_lengths=costs.output_length_distribution(),
    )
    return ModelOptions(costs=costs, cluster=cluster, schedulers=schedulers, load_seconds=loads, sampling=sampling,
                        can_time_slice=can_time_slice)


def _fitting_degrees(costs: ModelCosts, cluster: Cluster) -> list[int]:
    """Every degree of the cluster where the model fits whole GPUs by the analytic memory accounting (a profile
    measured at a degree replaces its limits, not this check); the last DoesNotFitError if none."""
    architecture = costs.architecture
    tps: list[int] = []
    failure: DoesNotFitError | None = None
    for tp in cluster.tp_degrees():
        if architecture.intermediate_size % tp or architecture.num_attention_heads % tp:
            continue
        try:
            gpu_scheduler_config(architecture, cluster.spec, tp)
            tps.append(tp)
        except DoesNotFitError as exc:
            failure = exc
    if not tps:
        if failure is None:
            raise ConfigError(
                f"model {architecture.name}: no tensor-parallel degree in {cluster.tp_degrees()} divides its "
                f"attention heads and MLP width; use a cluster with other GPU counts"
            )
        raise DoesNotFitError(f"{failure} (cluster {cluster})")
    return tps


def _profiled_degree(costs: ModelCosts, cluster: Cluster) -> list[int]:
    """A measured engine profile stands for the model at its degree (the CPU engine has no other source)."""
    tp = costs.profile.tensor_parallel_size if costs.profile is not None else 1
    if tp not in cluster.tp_degrees():
        raise ConfigError(f"the profile of {costs.model} has TP={tp}, impossible on {cluster}; profile TP 1 instead")
    return [tp]
