"""The engine set: the running engines of the pool, the ones waiting for their devices, and how requests are
spread over them.

``reconcile(stage)`` makes the engines match a plan's stage: an engine is kept when the stage has a replica of
the same model on the same devices with the same tensor-parallel degree, memory share and time slicing
(``ExecutionPlan.replica_devices`` splits a plan into replicas); the others stop, and the new ones wait until
their share of each device's memory fits beside the engines still there (``DeviceMemory``), so engines planned
to share a GPU start together and others wait for the engines they replace to stop. A replica listed in a
stage entry without nodes is preloading: it loads beside the running engines and gets no requests until a
stage lists its nodes.

Why apart from the driver: what runs where, and how many requests each replica may hold, can be read and
tested without the queues or the planner; the engine set knows requests only through a ``take`` callback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass

from samullm_lc.planner.plan import DeviceMemory, ExecutionPlan, Stage
from samullm_lc.runtime.backends.base import Backend, EngineSpec
from samullm_lc.runtime.requests import Request

ReplicaKey = tuple[str, tuple[int, ...]]
"""A replica's place: its model and devices."""


@dataclass(slots=True)
class RunningEngine:
    """One engine the pool started (loading, serving or stopping), and the plan whose replica it is."""

    spec: EngineSpec
    plan: ExecutionPlan
    started_at: float  # backend seconds
    ready_at: float | None = None  # backend seconds; None while it loads
    stopping: bool = False  # asked to stop; its devices are free once ``EngineStopped`` arrives
    in_flight: int = 0  # requests handed to it and not finished
    requests_done: int = 0


def spec_matches(spec: EngineSpec, plan: ExecutionPlan) -> bool:
    """Whether an engine started as ``spec`` is a replica of ``plan`` as it stands (devices checked by the
    caller): same model, tensor-parallel degree, memory share and time slicing."""
    return (spec.model, spec.tp, spec.memory_fraction, spec.time_sliced) == (
        plan.model, plan.tp, plan.memory_fraction, plan.time_sliced)


class EngineSet:
    """The pool's engines; calls the backend to start, stop and feed them (driver thread only)."""

    def __init__(self, backend: Backend, *, max_in_flight: int) -> None:
        self.backend = backend
        self.max_in_flight = max_in_flight
        self._engines: dict[int, RunningEngine] = {}
        self._next_engine_id = 0
        self._waiting: list[tuple[EngineSpec, ExecutionPlan]] = []  # to start once their devices have room
        self._preloading: set[ReplicaKey] = set()  # loads now, serves from the next stage
        self._load_seconds: dict[str, dict[int, float]] = {}  # model -> tp -> measured load seconds
        self._failures: Counter[str] = Counter()  # model -> engines that failed

    # ---- what is there ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[RunningEngine]:
        return iter(list(self._engines.values()))

    def __len__(self) -> int:
        return len(self._engines)

    def get(self, engine_id: int) -> RunningEngine | None:
        """The engine of this id, if it was started and has not stopped."""
        return self._engines.get(engine_id)

    def of(self, model: str) -> list[RunningEngine]:
        """The model's engines that are not stopping (loading ones included)."""
        return [e for e in self._engines.values() if e.spec.model == model and not e.stopping]

    def waiting(self) -> list[EngineSpec]:
        """Engines of the stage waiting for their devices to have room."""
        return [spec for spec, _ in self._waiting]

    def serves(self, model: str) -> bool:
        """Whether an engine of ``model`` runs, loads or waits to start."""
        return bool(self.of(model)) or any(spec.model == model for spec, _ in self._waiting)

    def busy(self) -> bool:
        """Whether any engine has requests in flight."""
        return any(e.in_flight for e in self._engines.values())

    def running_plan(self, model: str) -> ExecutionPlan | None:
        """The plan the model's engines run if every replica of one plan is up or loading (the planner's
        ``RunState.engines``), else None. Loading ones count: restarting them elsewhere loses more."""
        running = self.of(model)
        whole = bool(running) and all(e.plan == running[0].plan for e in running) \
            and len(running) == running[0].plan.replicas
        return running[0].plan if whole else None

    def load_seconds(self, models: Iterable[str]) -> dict[str, dict[int, float]]:
        """Measured load seconds per model (of ``models``) and tensor-parallel degree."""
        wanted = set(models)
        return {m: dict(v) for m, v in self._load_seconds.items() if m in wanted}

    # ---- matching the plan ------------------------------------------------------------------------------
    def reconcile(self, stage: Stage | None) -> None:
        """Make the engines match ``stage``: keep the unchanged replicas, stop the rest, queue the new ones to
        start (``start_waiting`` starts them as their devices have room).

        Engines are replicas: one whose model, devices, TP degree, memory share and time slicing the stage keeps
        is kept even when its model's plan gains or loses replicas (they are independent engines), so growing a
        model onto freed devices does not restart the replicas it runs.
        """
        wanted: dict[ReplicaKey, tuple[ExecutionPlan, bool]] = {}  # -> (plan, serves this stage)
        for entry in stage.entries if stage else []:
            for devices in entry.plan.replica_devices():
                wanted[(entry.plan.model, devices)] = (entry.plan, bool(entry.nodes))
        self._preloading = {key for key, (_, serves) in wanted.items() if not serves}
        for engine in self._engines.values():
            if engine.stopping:
                continue
            key = (engine.spec.model, engine.spec.devices)
            plan = wanted[key][0] if key in wanted else None
            if plan is not None and spec_matches(engine.spec, plan):
                engine.plan = plan
                del wanted[key]
            else:
                engine.stopping = True
                self.backend.stop_engine(engine.spec.engine_id)
        self._waiting = []
        for (model, devices), (plan, _) in wanted.items():
            spec = EngineSpec(engine_id=self._next_engine_id, model=model, devices=devices, tp=plan.tp,
                              memory_fraction=plan.memory_fraction, time_sliced=plan.time_sliced)
            self._next_engine_id += 1
            self._waiting.append((spec, plan))

    def start_waiting(self, skip: Container[str] = ()) -> list[RunningEngine]:
        """Start the waiting engines whose share fits on each of their devices beside the engines there (running
        or still stopping); those of a model in ``skip`` are dropped. Returns the engines started."""
        memory = DeviceMemory((e.spec.devices, e.spec.memory_fraction) for e in self._engines.values())
        still, started = [], []
        for spec, plan in self._waiting:
            if spec.model in skip:
                continue
            if not memory.fits(spec.devices, spec.memory_fraction):
                still.append((spec, plan))
                continue
            engine = RunningEngine(spec=spec, plan=plan, started_at=self.backend.now())
            self._engines[spec.engine_id] = engine
            memory.take(spec.devices, spec.memory_fraction)
            self.backend.start_engine(spec)
            started.append(engine)
        self._waiting = still
        return started

    # ---- feeding them -----------------------------------------------------------------------------------
    def dispatch(self, model: str, queued: int, take: Callable[[int, int], list[Request]]) -> None:
        """Hand up to ``queued`` of ``model``'s requests to its ready replicas, least loaded first;
        ``take(engine_id, n)`` gives the next ``n`` (fewer if fewer are left).

        An engine holds at most ``max_in_flight`` requests and at most its share of the model's outstanding ones
        (queued and in flight, over the replicas up or loading): the replica ready first must not take
        everything, as the plan counts on each replica doing its part.
        """
        replicas = [e for e in self.of(model) if (model, e.spec.devices) not in self._preloading]
        engines = [e for e in replicas if e.ready_at is not None]
        if not queued or not engines:
            return
        outstanding = queued + sum(e.in_flight for e in replicas)
        limit = min(self.max_in_flight, -(-outstanding // len(replicas)))
        while queued:
            engine = min(engines, key=lambda e: e.in_flight)
            room = limit - engine.in_flight
            if room <= 0:
                break
            batch = take(engine.spec.engine_id, min(room, queued))
            if not batch:
                break
            queued -= len(batch)
            engine.in_flight += len(batch)
            self.backend.submit(engine.spec.engine_id, batch)

    # ---- what the backend reports -----------------------------------------------------------------------
    def ready(self, engine_id: int, load_seconds: float) -> RunningEngine | None:
        """An engine finished loading (``load_seconds`` measured, the process start left out)."""
        engine = self._engines.get(engine_id)
        if engine is not None:
            engine.ready_at = self.backend.now()
            self._load_seconds.setdefault(engine.spec.model, {})[engine.spec.tp] = load_seconds
        return engine

    def request_done(self, engine_id: int) -> None:
        """An engine finished one of its requests."""
        engine = self._engines.get(engine_id)
        if engine is not None:
            engine.in_flight -= 1
            engine.requests_done += 1

    def remove(self, engine_id: int) -> RunningEngine | None:
        """An engine stopped: forget it (None if it was not known)."""
        return self._engines.pop(engine_id, None)

    def count_failure(self, model: str) -> int:
        """One more engine of ``model`` failed; returns how many have."""
        self._failures[model] += 1
        return self._failures[model]

    def failures(self, model: str) -> int:
        """How many engines of ``model`` failed."""
        return self._failures[model]

    def close(self) -> None:
        """Stop every engine: the backend closes."""
        self._engines.clear()
        self.backend.close()


__all__ = ["EngineSet", "RunningEngine", "spec_matches"]
