"""The driver's glue, run in the test's thread on a scripted backend: requests in, events out, every future once."""

from concurrent.futures import Future

import pytest

from samullm_lc.errors import RequestError
from samullm_lc.planner import Cluster
from samullm_lc.runtime.backends.base import EngineReady, EngineSpec, EngineStopped, Event, RequestDone
from samullm_lc.runtime.driver import Driver
from samullm_lc.runtime.driver_settings import DriverSettings
from samullm_lc.runtime.requests import Completion, GenerationResult, Request, SamplingSpec

MODEL = "Llama-2-7b-hf"
CLUSTER = Cluster.parse("1xA100-80GB")


class ScriptedBackend:
    """Engines load at once and answer every request with 3 tokens, except that the first ``crashes`` batches
    kill their engine; ``broken`` makes ``wait`` raise (a bug in the loop)."""

    name = "scripted"

    def __init__(self, crashes: int = 0, broken: bool = False) -> None:
        self.clock = 0.0
        self.crashes = crashes
        self.broken = broken
        self.events: list[Event] = []
        self.started: list[EngineSpec] = []

    def now(self) -> float:
        return self.clock

    def start_engine(self, spec: EngineSpec) -> None:
        self.started.append(spec)
        self.events.append(EngineReady(spec.engine_id, load_seconds=1.0))

    def submit(self, engine_id: int, requests: list[Request]) -> None:
        if self.crashes:
            self.crashes -= 1
            self.events.append(EngineStopped(engine_id, tuple(r.id for r in requests), failure="injected crash"))
            return
        for r in requests:
            result = GenerationResult(model=r.model, completions=[Completion(text="abc", num_tokens=3)], prompt_tokens=2)
            self.events.append(RequestDone(engine_id, r.id, result))

    def stop_engine(self, engine_id: int) -> None:
        self.events.append(EngineStopped(engine_id, ()))

    def wait(self, timeout: float) -> list[Event]:
        if self.broken and self.events:
            raise ValueError("injected failure")
        self.clock += 1.0
        events, self.events = self.events, []
        return events

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass


def _driver(backend: ScriptedBackend, **settings) -> Driver:
    return Driver(None, CLUSTER, backend, models=[MODEL], profiles={}, journal=None,
                  settings=DriverSettings(**settings))


def _offer(driver: Driver, n: int) -> list[Future]:
    futures = []
    for i in range(n):
        future: Future = Future()
        request = Request(id=i, model=MODEL, kind="tokens", prompt=[1, 2], sampling=SamplingSpec(max_tokens=8))
        assert driver.offer(request, future) is None
        futures.append(future)
    return futures


def _run_until_idle(driver: Driver) -> None:
    driver.closing.set()
    driver.run()


def test_every_offered_request_resolves_once_and_the_report_counts_it():
    driver = _driver(ScriptedBackend())
    futures = _offer(driver, 20)
    futures[3].cancel()  # cancelled before it was taken in: not run, not counted
    _run_until_idle(driver)
    assert driver.is_idle()
    assert all(f.result().output_tokens == 3 for i, f in enumerate(futures) if i != 3) and futures[3].cancelled()
    report = driver.snapshot()
    (model,) = report.models
    assert (model.requests_submitted, model.requests_done, model.requests_expected) == (19, 19, 19)
    assert [r.reason for r in report.replans] == ["start"] and len(report.engines) == 1
    assert report.engines[0].requests_done == 19 and report.ok


def test_an_engine_that_fails_hands_its_requests_back_and_a_new_engine_runs_them():
    backend = ScriptedBackend(crashes=1)
    driver = _driver(backend)
    futures = _offer(driver, 5)
    _run_until_idle(driver)
    assert all(f.result().output_tokens == 3 for f in futures)
    report = driver.snapshot()
    assert report.engine_failures == ["2.0 s: injected crash"]
    assert [r.reason for r in report.replans] == ["start", f"engine 0 ({MODEL}) failed: injected crash"]
    assert [spec.engine_id for spec in backend.started] == [0, 1]


def test_a_request_on_max_attempts_failed_engines_fails_alone_with_the_last_failure():
    driver = _driver(ScriptedBackend(crashes=2), max_attempts=2, max_engine_failures=5)
    futures = _offer(driver, 3)
    _run_until_idle(driver)
    for future in futures:
        with pytest.raises(RequestError, match="was on 2 engines that failed; last failure: injected crash"):
            future.result(0)
    assert driver.snapshot().models[0].requests_failed == 3


def test_a_model_whose_engines_keep_failing_is_given_up_and_later_requests_fail_at_intake():
    driver = _driver(ScriptedBackend(crashes=100), max_engine_failures=2)
    futures = _offer(driver, 4)
    _run_until_idle(driver)
    assert all("its requests are abandoned" in str(f.exception()) for f in futures)
    report = driver.snapshot()
    assert len(report.engine_failures) == 2 and any("abandoned" in e for e in report.errors)
    late = Future()
    assert driver.offer(Request(id=99, model=MODEL, kind="tokens", prompt=[1], sampling=SamplingSpec()), late) \
        is not None  # the loop ended: intake is closed


def test_when_the_loop_fails_every_future_fails_with_the_cause_and_intake_closes():
    driver = _driver(ScriptedBackend(broken=True))
    futures = _offer(driver, 10)
    with pytest.raises(ValueError, match="injected failure"):
        _run_until_idle(driver)
    assert all("driver failed: ValueError: injected failure" in str(f.exception()) for f in futures)
    refused = driver.offer(Request(id=50, model=MODEL, kind="tokens", prompt=[1], sampling=SamplingSpec()), Future())
    assert "driver failed" in refused
    assert driver.snapshot().models[0].requests_failed == 10
