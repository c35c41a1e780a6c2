"""The engine set: engines kept, stopped and started to match a stage, memory per device, dispatch limits."""

from samullm_lc.planner.plan import ExecutionPlan, Stage, StageEntry
from samullm_lc.runtime.backends.base import EngineSpec
from samullm_lc.runtime.engine_set import EngineSet, spec_matches
from samullm_lc.runtime.requests import Request, SamplingSpec

MODEL, OTHER = "model-a", "model-b"


class FakeBackend:
    """Records what the engine set asks of it; nothing runs."""

    name = "fake"

    def __init__(self) -> None:
        self.clock = 0.0
        self.started: list[EngineSpec] = []
        self.stopped: list[int] = []
        self.submitted: list[tuple[int, list[int]]] = []
        self.closed = False

    def now(self) -> float:
        return self.clock

    def start_engine(self, spec: EngineSpec) -> None:
        self.started.append(spec)

    def submit(self, engine_id: int, requests: list[Request]) -> None:
        self.submitted.append((engine_id, [r.id for r in requests]))

    def stop_engine(self, engine_id: int) -> None:
        self.stopped.append(engine_id)

    def wait(self, timeout: float) -> list:
        return []

    def wake(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _plan(gpus: tuple[int, ...], *, model: str = MODEL, tp: int = 1, memory: float = 1.0,
          sliced: bool = False) -> ExecutionPlan:
    return ExecutionPlan(model=model, tp=tp, replicas=len(gpus) // tp, gpus=gpus, memory_fraction=memory,
                         time_sliced=sliced)


def _stage(*plans: ExecutionPlan, preload: tuple[ExecutionPlan, ...] = ()) -> Stage:
    entries = [StageEntry(nodes=[p.model], plan=p) for p in plans] + [StageEntry(nodes=[], plan=p) for p in preload]
    return Stage(start_seconds=0, end_seconds=1, entries=entries)


class Queue:
    """A stand-in for the request book's ``next_batch``: numbered requests, handed out in order."""

    def __init__(self, n: int) -> None:
        self.left = list(range(n))

    def take(self, engine_id: int, size: int) -> list[Request]:
        batch, self.left = self.left[:size], self.left[size:]
        return [Request(id=i, model=MODEL, kind="tokens", prompt=[1], sampling=SamplingSpec()) for i in batch]


def _started(engines: EngineSet, backend: FakeBackend, stage: Stage) -> list:
    engines.reconcile(stage)
    engines.start_waiting()
    for engine in engines:
        engines.ready(engine.spec.engine_id, load_seconds=2.0)
    return list(engines)


def test_a_model_gaining_a_replica_keeps_the_replica_it_runs_and_losing_it_stops_it():
    backend = FakeBackend()
    engines = EngineSet(backend, max_in_flight=8)
    engines.reconcile(_stage(_plan((1,))))
    (first,) = engines.start_waiting()
    engines.reconcile(_stage(_plan((1, 0))))
    assert not first.stopping and first.plan.replicas == 2
    assert [spec.devices for spec in engines.waiting()] == [(0,)]
    engines.reconcile(_stage(_plan((0,))))  # the replica on GPU 1 is no longer wanted
    assert first.stopping and backend.stopped == [first.spec.engine_id]


def test_a_changed_memory_share_tp_or_time_slicing_restarts_the_engine():
    for changed in (_plan((0,), memory=0.5), _plan((0,), memory=0.5, sliced=True), _plan((0, 1), tp=2)):
        backend = FakeBackend()
        engines = EngineSet(backend, max_in_flight=8)
        engines.reconcile(_stage(_plan((0,), memory=0.5) if changed.time_sliced else _plan((0,))))
        (first,) = engines.start_waiting()
        engines.reconcile(_stage(changed))
        assert first.stopping, changed.short()
        (spec,) = engines.waiting()
        assert spec_matches(spec, changed) and spec.time_sliced == changed.time_sliced


def test_an_engine_waits_for_its_devices_memory_and_engines_planned_to_share_start_together():
    backend = FakeBackend()
    engines = EngineSet(backend, max_in_flight=8)
    engines.reconcile(_stage(_plan((0,))))
    (old,) = engines.start_waiting()
    engines.reconcile(_stage(_plan((0,), model=OTHER, memory=0.5), _plan((0,), memory=0.4)))
    assert old.stopping and engines.start_waiting() == []  # the old engine still holds all of GPU 0
    assert engines.remove(old.spec.engine_id) is old
    started = engines.start_waiting()
    assert [(e.spec.model, e.spec.memory_fraction) for e in started] == [(OTHER, 0.5), (MODEL, 0.4)]
    assert engines.waiting() == [] and len(engines) == 2


def test_waiting_engines_of_a_skipped_model_are_dropped():
    engines = EngineSet(FakeBackend(), max_in_flight=8)
    engines.reconcile(_stage(_plan((0,)), _plan((1,), model=OTHER)))
    assert [e.spec.model for e in engines.start_waiting(skip={MODEL})] == [OTHER]
    assert engines.waiting() == [] and not engines.serves(MODEL) and engines.serves(OTHER)


def test_replicas_share_the_queue_and_each_holds_at_most_max_in_flight():
    backend = FakeBackend()
    engines = EngineSet(backend, max_in_flight=4)
    _started(engines, backend, _stage(_plan((0, 1))))
    queue = Queue(6)
    engines.dispatch(MODEL, len(queue.left), queue.take)
    assert backend.submitted == [(0, [0, 1, 2]), (1, [3, 4, 5])]  # ceil(6 / 2) each
    queue = Queue(20)
    engines.dispatch(MODEL, len(queue.left), queue.take)
    assert [sum(len(ids) for e, ids in backend.submitted if e == k) for k in (0, 1)] == [4, 4]
    assert engines.busy() and len(queue.left) == 18
    engines.request_done(0)
    assert [e.in_flight for e in engines] == [3, 4] and [e.requests_done for e in engines] == [1, 0]


def test_a_loading_replica_counts_for_the_share_and_a_preloading_one_gets_nothing():
    backend = FakeBackend()
    engines = EngineSet(backend, max_in_flight=100)
    engines.reconcile(_stage(_plan((0, 1)), preload=(_plan((2,), model=OTHER),)))
    engines.start_waiting()
    engines.ready(0, load_seconds=1.0)
    queue = Queue(10)
    engines.dispatch(MODEL, len(queue.left), queue.take)
    assert backend.submitted == [(0, [0, 1, 2, 3, 4])]  # engine 1 still loads: it keeps its half
    engines.ready(2, load_seconds=1.0)
    engines.dispatch(OTHER, 5, Queue(5).take)
    assert len(backend.submitted) == 1  # the preloading engine serves from the next stage on
    engines.reconcile(_stage(_plan((2,), model=OTHER)))
    engines.dispatch(OTHER, 5, Queue(5).take)
    assert backend.submitted[-1] == (2, [0, 1, 2, 3, 4])


def test_the_running_plan_is_known_once_every_replica_of_one_plan_is_up_and_loads_are_measured():
    backend = FakeBackend()
    engines = EngineSet(backend, max_in_flight=8)
    plan = _plan((0, 1))
    engines.reconcile(_stage(plan))
    assert engines.running_plan(MODEL) is None  # waiting to start
    engines.start_waiting()
    assert engines.running_plan(MODEL) == plan  # loading counts
    engines.ready(1, load_seconds=3.5)
    assert engines.load_seconds([MODEL, OTHER]) == {MODEL: {1: 3.5}} and engines.load_seconds([OTHER]) == {}
    engines.remove(0)
    assert engines.running_plan(MODEL) is None


def test_a_stopped_engine_is_forgotten_failures_are_counted_and_close_closes_the_backend():
    backend = FakeBackend()
    engines = EngineSet(backend, max_in_flight=8)
    _started(engines, backend, _stage(_plan((0,))))
    assert engines.remove(0) is not None and engines.remove(0) is None and engines.get(0) is None
    assert engines.ready(0, load_seconds=1.0) is None
    engines.request_done(0)  # a late result of a gone engine changes nothing
    assert engines.count_failure(MODEL) == 1 and engines.count_failure(MODEL) == 2 and engines.failures(OTHER) == 0
    engines.close()
    assert backend.closed and len(engines) == 0
