"""A plan: a sequence of stages, each naming the models that run concurrently and how each one runs.

``ExecutionPlan`` is one model's plan inside a stage (tensor-parallel degree, data-parallel replicas, the
GPUs, and the share of their memory when engines share GPUs). A stage ends when its first node finishes;
unfinished nodes carry their progress into the next stage. Everything is a pydantic model with JSON
round-trip, and ``Plan.describe()`` prints it for a person.

The texts name the devices after the plan's cluster (``cluster.device_word``: cores on the CPU engine, GPUs
otherwise); the field names keep ``gpus`` for every kind of device.

This is the placement vocabulary the planner and the runtime share: ``ExecutionPlan.replica_devices`` splits
a plan's devices into its replicas, ``time_sliced`` says an engine computes on a GPU beside another computing
engine, and ``DeviceMemory`` checks that the engines on each device fit its memory.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import ConfigDict, Field, model_validator

from samullm_lc.errors import ConfigError
from samullm_lc.planner.cluster import Cluster, device_word
from samullm_lc.user_files import read_user_text
from samullm_lc.validated import ValidatedModel

MEMORY_SLACK = 1e-9
"""Rounding allowance when memory shares on one device are added up."""


class ExecutionPlan(ValidatedModel):
    """How one model runs: tensor-parallel degree x data-parallel replicas on the listed GPUs.

    ``memory_fraction`` below 1 without ``time_sliced`` leaves the rest of the GPUs' memory to an engine that
    loads beside this one for the next stage and computes only once this one has stopped.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    tp: int = Field(1, ge=1, description="Tensor-parallel degree of each replica.")
    replicas: int = Field(1, ge=1, description="Data-parallel replicas, each an engine of `tp` GPUs.")
    gpus: tuple[int, ...] = Field(description="GPU indices: replica r uses gpus[r*tp:(r+1)*tp].")
    memory_fraction: float = Field(1.0, gt=0, le=1, description="Share of each GPU's memory (below 1 when shared).")
    time_sliced: bool = Field(
        False, description="Computes on its GPU at the same time as another engine there (each is slowed); "
                           "one TP1 replica on a share of the memory.")

    @model_validator(mode="after")
    def _check(self) -> ExecutionPlan:
        if len(self.gpus) != self.tp * self.replicas:
            raise ConfigError(
                f"plan for {self.model}: {len(self.gpus)} GPUs listed for tp={self.tp} x replicas={self.replicas}"
            )
        if len(set(self.gpus)) != len(self.gpus):
            raise ConfigError(f"plan for {self.model}: a GPU is listed twice in {self.gpus}")
        if self.time_sliced and (self.tp != 1 or self.replicas != 1 or self.memory_fraction >= 1.0):
            raise ConfigError(f"plan for {self.model}: a time-sliced engine is one TP1 replica on a share of one GPU's "
                              f"memory below 1; list each time-sliced replica as its own plan")
        return self

    def replica_devices(self) -> list[tuple[int, ...]]:
        """The devices of each replica: replica r runs on ``gpus[r*tp:(r+1)*tp]``."""
        return [tuple(self.gpus[r * self.tp:(r + 1) * self.tp]) for r in range(self.replicas)]

    @property
    def num_gpus(self) -> int:
        """GPUs the plan occupies."""
        return len(self.gpus)

    def short(self, cluster: Cluster | str | None = None) -> str:
        """One line for a person, e.g. ``vicuna TP2x2DP on GPUs [0, 1, 2, 3]``; the devices are named after the
        ``cluster``'s hardware (``cores [0]`` on a cpu cluster; GPUs without one)."""
        parallel = f"TP{self.tp}" + (f"x{self.replicas}DP" if self.replicas > 1 else "")
        share = f" @{self.memory_fraction:.0%} mem" if self.memory_fraction < 1 else ""
        sliced = " time-sliced" if self.time_sliced else ""
        devices = device_word(cluster) if cluster is not None else "GPUs"
        return f"{self.model} {parallel} on {devices} {list(self.gpus)}{share}{sliced}"


class DeviceMemory:
    """The shares of each device's memory that engines hold; an engine fits when its share fits on every one of
    its devices. The one per-device memory check of the planner (a stage's engines) and the runtime (engines
    starting while others still stop)."""

    __slots__ = ("used",)

    def __init__(self, engines: Iterable[tuple[Sequence[int], float]] = ()) -> None:
        self.used: defaultdict[int, float] = defaultdict(float)
        for devices, fraction in engines:
            self.take(devices, fraction)

    def fits(self, devices: Sequence[int], fraction: float) -> bool:
        """Whether an engine holding ``fraction`` of each of ``devices`` fits beside the ones taken."""
        return all(self.used[d] + fraction <= 1.0 + MEMORY_SLACK for d in devices)

    def take(self, devices: Sequence[int], fraction: float) -> None:
        """Count an engine holding ``fraction`` of each of ``devices``."""
        for d in devices:
            self.used[d] += fraction

    def over_committed(self) -> list[int]:
        """Devices whose engines hold more than all of their memory."""
        return sorted(d for d, used in self.used.items() if used > 1.0 + MEMORY_SLACK)


class StageEntry(ValidatedModel):
    """One engine of a stage: the nodes it serves (several when vertically fused) and its plan."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[str] = Field(description="Nodes it serves; none while it loads beside the stage's engines for the next.")
    plan: ExecutionPlan
    load_seconds: float = Field(0.0, ge=0, description="Charged at the stage start when the engine (re)starts.")
    finished_nodes: list[str] = Field(default_factory=list, description="Nodes whose last request ends in this stage.")
    requests_done: dict[str, int] = Field(default_factory=dict, description="Per node, requests finished by stage end.")


class Stage(ValidatedModel):
    """Models that run at the same time, from ``start_seconds`` until the first of them finishes."""

    model_config = ConfigDict(extra="forbid")

    start_seconds: float = Field(ge=0)
    end_seconds: float = Field(ge=0)
    entries: list[StageEntry]


class Plan(ValidatedModel):
    """A whole application's plan and its estimated end-to-end time."""

    model_config = ConfigDict(extra="forbid")

    app: str
    cluster: str
    planner: str
    stages: list[Stage]
    estimated_seconds: float = Field(description="End-to-end time, model loads included.")
    estimated_seconds_spread: tuple[float, float] | None = Field(
        None, description="(min, max) over output-length samples, when the plan was evaluated on several."
    )
    planning_seconds: float = 0.0

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (``samullm.offline(plan=path)`` runs it again without planning)."""
        path = Path(path)
        path.write_text(self.model_dump_json(indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan written by ``save``; ConfigError naming the file if it is missing or not a plan."""
        fix = "give a file written by Plan.save or `samullm plan --out FILE --json`"
        text = read_user_text(path, what="plan", fix=fix)
        try:
            return cls.model_validate_json(text)
        except ConfigError as exc:
            raise ConfigError(f"plan {path} is not a valid Plan ({exc}); {fix}") from None

    def describe(self) -> str:
        """The plan as a person reads it: one block per stage."""
        lines = [f"{self.app} on {self.cluster} [{self.planner}]: {self.estimated_seconds:.1f} s estimated"]
        if self.estimated_seconds_spread:
            low, high = self.estimated_seconds_spread
            lines[0] += f" ({low:.1f}-{high:.1f} s over output-length samples)"
        for index, stage in enumerate(self.stages):
            lines.append(f"  stage {index}: {stage.start_seconds:.1f}-{stage.end_seconds:.1f} s")
            for entry in stage.entries:
                finished = f"; finishes {', '.join(entry.finished_nodes)}" if entry.finished_nodes else ""
                load = f" (+{entry.load_seconds:.1f} s load)" if entry.load_seconds else ""
                serves = ", ".join(entry.nodes) or "(loads for the next stage)"
                lines.append(f"    {serves}: {entry.plan.short(self.cluster)}{load}{finished}")
        return "\n".join(lines)
