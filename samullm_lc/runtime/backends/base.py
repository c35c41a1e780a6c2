"""The interface between the engine pool and whatever runs the engines: real vLLM processes or a simulator.

The pool's driver starts and stops engines, hands them requests, and reacts to events. Every call is
non-blocking except ``wait``, which returns the next events (or none when woken or timed out). Time is the
backend's own clock: wall seconds for real engines, virtual seconds for the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from samullm_lc.runtime.requests import GenerationResult, Request


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One engine to start: a model replica on some devices (the runtime's side of an ``ExecutionPlan`` replica)."""

    engine_id: int
    model: str
    devices: tuple[int, ...]
    tp: int = 1
    memory_fraction: float = 1.0  # share of each device's memory the engine may use
    time_sliced: bool = False  # computes beside another engine on its device (``ExecutionPlan.time_sliced``)


@dataclass(frozen=True, slots=True)
class EngineReady:
    """An engine finished loading and takes requests."""

    engine_id: int
    load_seconds: float
    fresh_process: bool = False  # the first engine of a new worker process: the load includes importing vLLM


@dataclass(frozen=True, slots=True)
class RequestDone:
    """A request finished on an engine: a result, or an error that concerns this request only."""

    engine_id: int
    request_id: int
    result: GenerationResult | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EngineStopped:
    """An engine is gone and its devices are free; ``unfinished`` are the request ids it had not finished.

    ``failure`` is None for a stop the pool asked for, else why the engine died (crash, killed process).
    ``permanent`` says a new engine of the model would fail the same way (the pool gives the model up at once);
    ``node_lost`` that the engine's node left the cluster (not the model's fault: it does not count against it).
    """

    engine_id: int
    unfinished: tuple[int, ...]
    failure: str | None = None
    permanent: bool = False
    node_lost: bool = False


@dataclass(frozen=True, slots=True)
class DevicesLost:
    """Devices the backend can no longer use: their node left the cluster. It comes before the ``EngineStopped``
    of the engines that ran there; the pool re-plans on the devices left (``Cluster.without``)."""

    devices: tuple[int, ...]
    reason: str


Event = EngineReady | RequestDone | EngineStopped | DevicesLost


class Backend(Protocol):
    """What runs engines for the pool."""

    name: str

    def now(self) -> float:
        """Seconds since the backend started, on its clock."""
        ...

    def start_engine(self, spec: EngineSpec) -> None:
        """Begin loading an engine; ``EngineReady`` (or ``EngineStopped`` with a failure) follows."""
        ...

    def submit(self, engine_id: int, requests: list[Request]) -> None:
        """Hand requests to a ready engine."""
        ...

    def stop_engine(self, engine_id: int) -> None:
        """Ask an engine to stop; results it finishes meanwhile arrive first, then ``EngineStopped``."""
        ...

    def wait(self, timeout: float) -> list[Event]:
        """Events since the last call; blocks up to ``timeout`` seconds (real time) for the first one."""
        ...

    def wake(self) -> None:
        """Make a blocked ``wait`` return now (thread-safe: clients call it when they submit)."""
        ...

    def close(self) -> None:
        """Stop every engine and release the devices."""
        ...
