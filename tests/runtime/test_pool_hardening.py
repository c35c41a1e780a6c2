"""No input may hang the pool, take down other requests, or hide a failure (the `sim` backend: simulated
engines on a virtual clock). Each hang case runs under a timeout and checks that every future resolved."""

import sqlite3
import time
import tracemalloc
from concurrent.futures import wait

import numpy as np
import pytest

from samullm_lc.errors import ConfigError, PoolError, RequestError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.runtime.app_runner import AppRun
from samullm_lc.runtime.backends.sim_backend import SimBackend
from samullm_lc.runtime.pool import EnginePool
from samullm_lc.runtime.requests import GenerationResult, SamplingSpec, content_key

MODEL = "Llama-2-7b-hf"
CLUSTER = "1xA100-80GB"
pytestmark = pytest.mark.timeout(120)


def _pool(**kwargs) -> EnginePool:
    return EnginePool(None, CLUSTER, models=[MODEL], backend="sim", progress=False, **kwargs)


def _all_resolved(futures, timeout: float = 60) -> None:
    _done, pending = wait(futures, timeout)
    assert not pending, f"{len(pending)} futures never resolved"


def test_a_bad_chat_message_fails_alone_and_the_requests_behind_it_complete():
    with _pool() as pool:
        first = pool.submit(MODEL, "a")
        bad = pool.submit(MODEL, messages=[{"role": "user", "content": 5}])
        last = pool.submit(MODEL, "b")
        _all_resolved([first, bad, last])
        with pytest.raises(RequestError, match="'content' must be a string or a list of text parts"):
            bad.result()
        assert isinstance(first.result(), GenerationResult) and isinstance(last.result(), GenerationResult)
    assert pool.report().requests_failed == 1 and pool.report().requests_done == 2


def test_content_blocks_are_text_joined_as_vllm_joins_them_and_media_parts_are_refused():
    blocks = [{"type": "text", "text": "Summarise this:"}, "a plain string part", {"type": "text", "text": None},
              {"type": "text", "text": "second block", "id": "lc_1"}]
    with _pool() as pool:
        taken = pool.submit(MODEL, messages=[{"role": "system", "content": None},
                                             {"role": "user", "content": blocks}])
        image = pool.submit(MODEL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
        _all_resolved([taken, image])
        assert taken.result().completions
        with pytest.raises(RequestError, match="type 'image_url' is not a text part"):
            image.result()
    from samullm_lc.runtime.requests import normalise_messages

    assert normalise_messages([{"role": "user", "content": blocks}])[0]["content"] == (
        "Summarise this:\na plain string part\nsecond block")


@pytest.mark.parametrize(("sampling", "problem"), [
    ({"seed": 2**70}, "seed"),  # passes vllm.SamplingParams, then overflows inside an engine step
    ({"n": 10**6}, "n"),
    ({"temperature": float("nan")}, "temperature"),
    ({"max_tokens": 2**40}, "max_tokens"),
    ({"n": 2, "temperature": 0}, "greedy"),
    ({"stop": [""]}, "stop"),
])
def test_sampling_the_engine_cannot_take_is_refused_at_submission(sampling, problem):
    with _pool() as pool:
        bad = pool.submit(MODEL, "hello", sampling=sampling)
        good = pool.submit(MODEL, "hello", sampling={"max_tokens": 8})
        _all_resolved([bad, good])
        with pytest.raises(RequestError, match=problem):
            bad.result()
        assert good.result().completions[0].num_tokens <= 8


def test_the_sampling_checks_refuse_whatever_vllm_refuses():
    # Parity with the engine's own checks (vllm.SamplingParams), so the dry run refuses what the real run would.
    vllm = pytest.importorskip("vllm")
    cases = [{"temperature": t} for t in (-0.1, 0.0, 2.0, 2.01, 1e9)] + [
        {"top_p": p} for p in (0.0, 1e-9, 1.0, 1.01)] + [
        {"max_tokens": m} for m in (0, 1, 2**31 - 1)] + [
        {"n": n, "temperature": t} for n in (1, 2) for t in (0.0, 1.0)] + [
        {"stop": s} for s in (["x"], [""], "x")] + [
        {"seed": s} for s in (-(2**63), -1, 2**63 - 1)]
    for case in cases:
        try:
            vllm.SamplingParams(**case)
            engine_takes = True
        except Exception:
            engine_takes = False
        try:
            SamplingSpec.parse(case)
            we_take = True
        except ConfigError:
            we_take = False
        assert we_take == engine_takes, case


def test_the_dry_run_refuses_prompts_the_real_engine_refuses():
    long = list(range(100, 200)) * 41  # 4,100 tokens: Llama-2's context is 4,096
    with _pool() as pool:
        too_long = pool.submit(MODEL, long)
        exactly = pool.submit(MODEL, long[:4096])
        fits = pool.submit(MODEL, long[:4000], sampling={"max_tokens": 200})
        outside = pool.submit(MODEL, [5, 32000])  # Llama-2's vocabulary is 32,000 tokens
        huge = pool.submit(MODEL, [5, 2**40])
        _all_resolved([too_long, exactly, fits, outside, huge])
        with pytest.raises(RequestError, match=r"prompt \(length 4100\) is longer than the maximum model length of 4096"):
            too_long.result()
        with pytest.raises(RequestError, match="plus the number of requested output tokens"):
            exactly.result()
        assert fits.result().completions[0].num_tokens <= 96  # the rest of the context, as vLLM stops there
        with pytest.raises(RequestError, match="Token id 32000 is out of vocabulary"):
            outside.result()
        with pytest.raises(RequestError, match=r"token ids must lie in \[0, 2147483647\]"):
            huge.result()


def test_settings_that_would_hang_the_pool_are_refused_when_it_is_made():
    with pytest.raises(ConfigError, match="max_in_flight must be a whole number of at least 1"):
        _pool(max_in_flight=0)
    with pytest.raises(ConfigError, match="seed must be a whole number of at least 0"):
        _pool(seed=-1)
    with pytest.raises(ConfigError, match="unknown planner 'foo'"):
        _pool(planner="foo")
    with pytest.raises(ConfigError, match="replan_threshold"):
        _pool(replan_threshold=float("inf"))


def test_a_pool_that_was_not_started_says_how_to_start_it():
    pool = _pool()
    with pytest.raises(PoolError, match="use `with EnginePool"):
        pool.submit(MODEL, "hi")


def test_a_model_that_fits_no_gpu_fails_its_requests_with_the_reason_and_the_report_says_so():
    app = AppGraph(name="big", nodes=[
        LLMNode(name="small", model=MODEL, input_tokens=[50] * 20, max_tokens=32),
        LLMNode(name="huge", model="Llama-2-70b-hf", input_tokens=[50] * 20, max_tokens=32, depends_on=["small"])])
    with EnginePool(app, "1xA100-40GB", backend="sim", progress=False) as pool:
        outcomes = AppRun(pool, app).start().wait(60)
    report = pool.report()
    assert all(isinstance(o, RequestError) for node in outcomes.values() for o in node)
    # the first node's requests failed in the pool; the second node's were never sent (their upstream failed)
    assert report.requests_failed == 20 and report.requests_done == 0 and not report.ok
    assert any("planning failed" in e and "Llama-2-70b-hf" in e for e in report.errors)
    assert "error: planning failed" in report.summary()


class _FailingBackend(SimBackend):
    """A simulated backend whose ``wait`` breaks once requests are on an engine: a bug in the driver's loop."""

    submitted = False

    def submit(self, engine_id, requests):
        self.submitted = True
        super().submit(engine_id, requests)

    def wait(self, timeout: float):
        if self.submitted:
            raise ValueError("injected failure")
        return super().wait(timeout)


def test_when_the_driver_fails_every_future_resolves_and_later_submissions_fail_at_once():
    from samullm_lc.planner import Cluster

    backend = _FailingBackend(Cluster.parse(CLUSTER))
    pool = EnginePool(None, CLUSTER, models=[MODEL], backend=backend, progress=False).start()
    futures = [pool.submit(MODEL, f"question {i}", sampling={"max_tokens": 512, "ignore_eos": True})
               for i in range(50)]
    _all_resolved(futures)
    assert all("driver failed: ValueError: injected failure" in str(f.exception()) for f in futures)
    late = pool.submit(MODEL, "after the failure")
    _all_resolved([late])
    with pytest.raises(RequestError, match="driver failed"):
        late.result()
    with pytest.raises(PoolError, match="driver failed: ValueError: injected failure"):
        pool.close()
    assert pool.report().requests_failed == 51


class _CrashingBackend(SimBackend):
    """A simulated backend whose engines die as soon as they are given requests (a crash, injected)."""

    def submit(self, engine_id, requests):
        super().submit(engine_id, requests)
        self.fail_engine(engine_id, "injected crash")


def test_a_model_whose_engines_keep_dying_fails_every_request_queued_or_in_flight_or_later():
    from samullm_lc.planner import Cluster

    pool = EnginePool(None, CLUSTER, models=[MODEL], backend=_CrashingBackend(Cluster.parse(CLUSTER)),
                      progress=False).start()
    futures = [pool.submit(MODEL, f"question {i}") for i in range(30)]
    _all_resolved(futures)
    late = pool.submit(MODEL, "after it was given up")
    _all_resolved([late])
    pool.close()
    assert all(isinstance(f.exception(), RequestError) for f in [*futures, late])
    assert "its requests are abandoned" in str(late.exception())
    report = pool.report()
    assert len(report.engine_failures) == 3 and report.requests_failed == 31
    assert any("abandoned" in e for e in report.errors)


class _CrashingModelBackend(SimBackend):
    """A simulated backend on which one model's engines die as they are given requests."""

    crashing_model = MODEL

    def submit(self, engine_id, requests):
        super().submit(engine_id, requests)
        if self.model_of(engine_id) == self.crashing_model:
            self.fail_engine(engine_id, "injected crash")


def test_once_a_model_is_given_up_the_plan_leaves_it_out_and_the_other_models_run():
    # One GPU, the sequential planner: the crashing model's stage comes first. Giving it up must not leave the
    # plan waiting for it (it used to plan it again and again, with an engine that never started).
    from samullm_lc.planner import Cluster

    other = "Mistral-7B-Instruct-v0.2"
    app = AppGraph(name="two", nodes=[LLMNode(name="a", model=MODEL, input_tokens=[100] * 20, max_tokens=50),
                                      LLMNode(name="b", model=other, input_tokens=[100] * 20, max_tokens=50)])
    pool = EnginePool(app, CLUSTER, backend=_CrashingModelBackend(Cluster.parse(CLUSTER)), planner="sequential",
                      progress=False).start()
    crashing = [pool.submit(MODEL, "q", node="a") for _ in range(20)]
    served = [pool.submit(other, "q", node="b") for _ in range(20)]
    _all_resolved(crashing + served)
    pool.close()
    assert all(isinstance(f.exception(), RequestError) for f in crashing)
    assert all(f.exception() is None for f in served)
    report = pool.report()
    assert any("abandoned" in e for e in report.errors) and report.replans[-1].reason == f"{other} finished"


class _StalledBackend(SimBackend):
    """A simulated backend whose engines never finish loading: requests stay queued (a long real run)."""

    def wait(self, timeout: float):
        time.sleep(min(timeout, 0.05))
        return []


def test_leaving_the_pool_by_ctrl_c_fails_what_is_outstanding_at_once():
    from samullm_lc.planner import Cluster

    pool = EnginePool(None, CLUSTER, models=[MODEL], backend=_StalledBackend(Cluster.parse(CLUSTER)),
                      progress=False)
    with pytest.raises(KeyboardInterrupt), pool:
        futures = [pool.submit(MODEL, f"question {i}") for i in range(20)]
        raise KeyboardInterrupt
    _all_resolved(futures, timeout=5)
    assert all("interrupted" in str(f.exception()) for f in futures)
    assert pool.report().requests_failed == 20


def test_an_unreadable_journalled_result_is_recomputed_and_reported(tmp_path):
    path = tmp_path / "run.sqlite"
    sampling = {"max_tokens": 16}
    with _pool(journal=path) as pool:
        first = [pool.generate(MODEL, f"q{i}", sampling=sampling) for i in range(3)]
    key = content_key(MODEL, "text", "q1", SamplingSpec.parse(sampling)) + ":0"
    with sqlite3.connect(path) as db:
        assert db.execute("UPDATE results SET result = '{not json' WHERE key = ?", (key,)).rowcount == 1
    with _pool(journal=path) as pool:
        again = [pool.submit(MODEL, f"q{i}", sampling=sampling) for i in range(3)]
        _all_resolved(again)
    report = pool.report()
    assert [f.result().from_journal for f in again] == [True, False, True]
    assert again[0].result().text == first[0].text
    assert report.journal_recomputed == 1 and report.requests_done == 3
    assert any(key in e and "recomputed" in e for e in report.errors)


def test_a_stream_of_requests_beyond_the_graph_runs_in_bounded_memory():
    # A pool serving a stream (the drop-in's case) keeps nothing per finished request: once the sample of
    # observed output lengths is full (20,000), the driver's and the simulated engine's state stay the same
    # size (it grew by about 450 bytes a request before, and each event scanned every request ever served).
    window, start, total = 500, 22_000, 40_000
    with _pool() as pool:
        inflight, sizes = [], {}
        tracemalloc.start()
        try:
            for i in range(total):
                inflight.append(pool.submit(MODEL, [7, 8, 9, 10], sampling={"max_tokens": 24}))
                if len(inflight) == window:
                    _all_resolved(inflight)
                    assert all(f.exception() is None for f in inflight)
                    inflight = []
                if i + 1 in (start, total):
                    pool.join(60)
                    sizes[i + 1] = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    grown = sizes[total] - sizes[start]
    # planning caches and the step-time table (doubling) make some noise; the old growth was 450 bytes a request
    assert grown < 50 * (total - start), f"{grown / (total - start):.0f} bytes kept per request"
    assert pool.report().requests_done == total


def test_thousands_of_random_requests_resolve_and_every_good_one_completes():
    fuzz_requests(num_random=3000, num_good=600, seed=0, pool_factory=_pool, max_prompt=2000)


def fuzz_requests(*, num_random: int, num_good: int, seed: int, pool_factory, max_prompt: int,
                  model: str = MODEL) -> None:
    """Random prompts, messages and sampling fields (random types and values, content blocks) mixed with good
    requests: every future resolves, every good request completes, no engine fails."""
    rng = np.random.default_rng(seed)
    with pool_factory() as pool:
        good, rest = [], []
        for i in range(num_random + num_good):
            if i % ((num_random + num_good) // num_good) == 0 and len(good) < num_good:
                good.append(pool.submit(model, f"good request {i}", sampling={"max_tokens": int(rng.integers(1, 16))}))
                continue
            prompt, messages = _random_prompt(rng, max_prompt)
            rest.append(pool.submit(model, prompt, messages=messages, sampling=_random_sampling(rng),
                                    node=_pick(rng, [None, "nope", 3, [1]])))
        _all_resolved(good + rest, timeout=300)
        assert all(f.exception() is None for f in good), [f.exception() for f in good if f.exception()][:3]
        assert any(f.exception() is None for f in rest) and any(f.exception() is not None for f in rest)
        assert all(isinstance(f.exception(), (RequestError, type(None))) for f in rest)
    report = pool.report()
    assert report.engine_failures == [] and report.errors == []
    assert report.requests_done + report.requests_failed == num_random + num_good


_VALUES = [None, 0, 1, -1, 2**70, -(2**70), 0.5, float("nan"), float("inf"), "", "x", "text", True, [], [1],
           ["a", ""], {}, {"a": 1}, b"bytes", object()]


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _random_value(rng: np.random.Generator):
    return _pick(rng, _VALUES)


def _random_prompt(rng: np.random.Generator, max_prompt: int):
    kind = int(rng.integers(6))
    if kind == 0:
        return " ".join(["word"] * int(rng.integers(0, max_prompt))), None
    if kind == 1:
        return rng.integers(-5, 40_000, int(rng.integers(0, max_prompt // 4 + 2))).tolist(), None
    if kind == 2:
        return _random_value(rng), None
    if kind == 3:
        return None, [{"role": _pick(rng, ["user", "system", "assistant", "", 7]), "content": _random_content(rng)}
                      for _ in range(int(rng.integers(0, 4)))]
    if kind == 4:
        return None, _random_value(rng)
    return _random_value(rng), _random_value(rng)


def _random_content(rng: np.random.Generator):
    choice = int(rng.integers(4))
    if choice == 0:
        return "some text " * int(rng.integers(0, 20))
    if choice == 1:
        return _random_value(rng)
    parts = []
    for _ in range(int(rng.integers(0, 4))):
        kind = _pick(rng, ["text", "input_text", "refusal", "thinking", "image_url", "tool_use", None])
        key = {"refusal": "refusal", "thinking": "thinking"}.get(str(kind), "text")
        parts.append(_pick(rng, [{"type": kind, key: "part text"}, {"type": kind, key: _random_value(rng)},
                                 "bare string", _random_value(rng)]))
    return parts


def _random_sampling(rng: np.random.Generator):
    if rng.random() < 0.1:
        return _random_value(rng)
    fields = ["max_tokens", "temperature", "top_p", "stop", "seed", "n", "ignore_eos", "top_k", "bogus"]
    sampling = {}
    for name in rng.choice(fields, size=int(rng.integers(0, 4)), replace=False).tolist():
        sampling[str(name)] = _random_value(rng) if rng.random() < 0.5 else {
            "max_tokens": int(rng.integers(1, 64)), "temperature": float(rng.uniform(0, 2)),
            "top_p": float(rng.uniform(0.05, 1)), "stop": ["."], "seed": int(rng.integers(0, 2**62)),
            "n": int(rng.integers(1, 4)), "ignore_eos": bool(rng.random() < 0.5), "top_k": 5, "bogus": 1}[str(name)]
    return sampling
