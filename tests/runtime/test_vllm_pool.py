"""The engine pool on the real vLLM CPU engine: pass-through, bad requests, a killed engine, a killed run, and
worker processes reused across engines."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from backend_events import events_until

from samullm_lc.errors import RequestError
from samullm_lc.planner import Cluster
from samullm_lc.runtime.backends.base import EngineReady, EngineSpec, EngineStopped, RequestDone
from samullm_lc.runtime.backends.vllm_backend import VllmBackend
from samullm_lc.runtime.pool import EnginePool, default_engine_settings
from samullm_lc.runtime.requests import Request, SamplingSpec

pytestmark = pytest.mark.engine
MODEL = "tiny-llama-s"
PROFILE_SCALE = 0.2


@pytest.fixture(scope="module")
def profiles():
    from samullm_lc.profiling.pool_profiles import pool_profiles

    return pool_profiles([MODEL], scale=PROFILE_SCALE)


def test_the_pool_profile_tells_the_process_start_from_the_model_load(profiles):
    # Measured in a fresh process: its first engine start imports vLLM, a second one only loads the model.
    profile = profiles[MODEL]
    assert profile.process_start_seconds is not None and profile.process_start_seconds > profile.load_seconds > 0


def test_sampling_and_chat_pass_through_and_bad_requests_fail_alone(profiles):
    with EnginePool(None, "1xcpu", models=[MODEL], profiles=profiles, progress=False) as pool:
        seeded = {"max_tokens": 12, "temperature": 1.0, "seed": 7}
        same = [pool.submit(MODEL, "the quick brown fox", sampling=seeded) for _ in range(2)]
        other = pool.submit(MODEL, "the quick brown fox", sampling={**seeded, "seed": 8})
        chat = pool.submit(MODEL, messages=[{"role": "user", "content": "hello there"}], sampling={"max_tokens": 4})
        pair = pool.submit(MODEL, "two answers", sampling={"max_tokens": 6, "n": 2, "ignore_eos": True})
        too_long = pool.submit(MODEL, list(range(10, 210)) * 15, sampling={"max_tokens": 4})
        empty = pool.submit(MODEL, "")
        unknown = pool.submit("tiny-llama-xl", "hi")
        greedy = [pool.submit(MODEL, f"question {i}", sampling={"max_tokens": 5, "temperature": 0}) for i in range(20)]
        a, b = (f.result(120) for f in same)
        assert a.text == b.text and a.completions[0].num_tokens == 12
        assert other.result(120).completions[0].num_tokens == 12
        plain = pool.generate(MODEL, "hello there", sampling={"max_tokens": 4})
        assert chat.result(120).prompt_tokens > plain.prompt_tokens  # the chat template wrapped the message
        assert [c.num_tokens for c in pair.result(120).completions] == [6, 6]
        with pytest.raises(RequestError, match="(?i)longer than|maximum"):
            too_long.result(120)
        with pytest.raises(RequestError, match="empty"):
            empty.result(1)
        with pytest.raises(RequestError, match="unknown model 'tiny-llama-xl'"):
            unknown.result(1)
        assert all(1 <= f.result(120).completions[0].num_tokens <= 5 for f in greedy)
    report = pool.report()
    assert report.models[0].requests_failed == 1 and report.models[0].requests_done == 26


def _ready(events: list, engine_id: int) -> EngineReady:
    return next(e for e in events if isinstance(e, EngineReady) and e.engine_id == engine_id)


def test_a_stopped_engines_worker_process_hosts_the_next_engine():
    backend = VllmBackend(default_engine_settings(Cluster.parse("2xcpu")), device_kind="cpu")
    try:
        backend.start_engine(EngineSpec(engine_id=0, model=MODEL, devices=(0,)))
        fresh = _ready(events_until(backend, EngineReady, 0), 0)
        first_pid = backend.pids()[0]
        backend.stop_engine(0)
        events_until(backend, EngineStopped, 0)
        backend.start_engine(EngineSpec(engine_id=1, model=MODEL, devices=(1,)))  # another core: re-pinned
        reused = _ready(events_until(backend, EngineReady, 1), 1)
        assert backend.pids()[1] == first_pid
        # A reused process has vLLM imported: its engine starts in a fraction of the fresh process's time.
        assert fresh.fresh_process and not reused.fresh_process
        assert reused.load_seconds < 0.5 * fresh.load_seconds
        request = Request(id=7, model=MODEL, kind="text", prompt="hello again",
                          sampling=SamplingSpec(max_tokens=5, ignore_eos=True))
        backend.submit(1, [request])
        done = [e for e in events_until(backend, RequestDone, 1) if isinstance(e, RequestDone)]
        assert done[0].error is None and done[0].result.completions[0].num_tokens == 5
    finally:
        backend.close()


def test_a_killed_engine_process_is_replaced_and_every_result_arrives_once(profiles):
    n = 120
    with EnginePool(None, "1xcpu", models=[MODEL], profiles=profiles, progress=False, max_in_flight=64) as pool:
        futures = [pool.submit(MODEL, f"prompt number {i} " * 4, sampling={"max_tokens": 48, "ignore_eos": True})
                   for i in range(n)]
        deadline = time.monotonic() + 180
        while sum(f.done() for f in futures) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        (pid,) = pool.backend.pids().values()
        os.kill(pid, signal.SIGKILL)
        results = [f.result(300) for f in futures]
    assert len(results) == n and all(r.completions[0].num_tokens == 48 for r in results)
    report = pool.report()
    assert report.models[0].requests_done == n and report.models[0].requests_failed == 0
    assert len(report.engine_failures) == 1 and str(pid) in report.engine_failures[0]
    assert any("failed" in r.reason for r in report.replans)
    assert len(report.engines) == 2  # the killed engine and its replacement


_RUN = textwrap.dedent("""
    import sys
    from samullm_lc.profiling.pool_profiles import pool_profiles
    from samullm_lc.runtime.pool import EnginePool

    if __name__ == "__main__":
        journal, n = sys.argv[1], int(sys.argv[2])
        profiles = pool_profiles(["tiny-llama-s"], scale=float(sys.argv[3]))
        with EnginePool(None, "1xcpu", models=["tiny-llama-s"], profiles=profiles, journal=journal,
                        progress=False, max_in_flight=16) as pool:
            futures = [pool.submit("tiny-llama-s", f"request {i % 50}", sampling={"max_tokens": 32, "temperature": 0})
                       for i in range(n)]
            for f in futures:
                f.result()
""")


def test_a_run_killed_with_sigkill_resumes_from_its_journal(profiles, tmp_path):
    n = 100
    journal = tmp_path / "journal.sqlite"
    script = tmp_path / "run.py"
    script.write_text(_RUN)
    child = subprocess.Popen([sys.executable, str(script), str(journal), str(n), str(PROFILE_SCALE)],
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    done_before = 0
    while time.monotonic() < deadline and child.poll() is None:
        if journal.exists():
            with sqlite3.connect(journal) as db:
                done_before = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            if done_before >= 20:
                break
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert 20 <= done_before < n, "the run must be killed part-way"
    with sqlite3.connect(journal) as db:
        recorded = dict(db.execute("SELECT key, result FROM results").fetchall())

    with EnginePool(None, "1xcpu", models=[MODEL], profiles=profiles, journal=journal, progress=False) as pool:
        futures = [pool.submit(MODEL, f"request {i % 50}", sampling={"max_tokens": 32, "temperature": 0})
                   for i in range(n)]
        results = [f.result(300) for f in futures]
    record = pool.report().models[0]
    assert len(results) == n and record.requests_done == n
    assert record.from_journal == len(recorded) and record.from_journal >= done_before
    assert sum(r.from_journal for r in results) == len(recorded)
    # identical prompts (i and i + 50) keep distinct journal entries, and greedy answers match across runs
    by_prompt = {}
    for i, r in enumerate(results):
        by_prompt.setdefault(i % 50, set()).add(r.text)
    assert all(len(texts) == 1 for texts in by_prompt.values())


def test_a_request_that_breaks_an_engine_step_fails_alone_and_the_engine_keeps_running():
    # A seed past int64 passes vllm.SamplingParams, then overflows inside the engine step (the pool refuses it
    # at submission; here it is handed to the backend directly, as any request vLLM only fails while running
    # would be). The worker aborts the step's requests, re-runs them in halves, and fails only the culprit.
    backend = VllmBackend(default_engine_settings(Cluster.parse("1xcpu")), device_kind="cpu")
    try:
        backend.start_engine(EngineSpec(engine_id=0, model=MODEL, devices=(0,)))
        events_until(backend, EngineReady, 0)
        good = [Request(id=i, model=MODEL, kind="text", prompt=f"request {i}",
                        sampling=SamplingSpec(max_tokens=6, ignore_eos=True, seed=i)) for i in range(10)]
        bad = Request(id=99, model=MODEL, kind="text", prompt="the bad one",
                      sampling=SamplingSpec.model_construct(**{**SamplingSpec().model_dump(), "seed": 2**70}))
        backend.submit(0, good[:5] + [bad] + good[5:])
        done, deadline = {}, time.monotonic() + 180
        while len(done) < 11 and time.monotonic() < deadline:
            for event in backend.wait(timeout=1.0):
                assert not isinstance(event, EngineStopped), event
                if isinstance(event, RequestDone):
                    done[event.request_id] = event
        assert set(done) == {*range(10), 99}
        assert all(done[i].error is None and done[i].result.completions[0].num_tokens == 6 for i in range(10))
        assert "failed while running only this request" in done[99].error and "Overflow" in done[99].error
        backend.submit(0, [Request(id=100, model=MODEL, kind="text", prompt="after it",
                                   sampling=SamplingSpec(max_tokens=3, ignore_eos=True))])
        after = [e for e in events_until(backend, RequestDone, 0) if isinstance(e, RequestDone)]
        assert after[-1].request_id == 100 and after[-1].error is None
    finally:
        backend.close()


def test_random_requests_on_the_real_engine_resolve_without_an_engine_restart(profiles):
    from tests.runtime.test_pool_hardening import fuzz_requests

    fuzz_requests(num_random=240, num_good=40, seed=1, max_prompt=600, model=MODEL, pool_factory=lambda: EnginePool(
        None, "1xcpu", models=[MODEL], profiles=profiles, progress=False))


_UNGUARDED = textwrap.dedent("""
    from samullm_lc.runtime.pool import EnginePool
    from samullm_lc.profiling.pool_profiles import pool_profiles

    profiles = pool_profiles(["tiny-llama-s"], scale={scale})
    with EnginePool(None, "1xcpu", models=["tiny-llama-s"], profiles=profiles, progress=False) as pool:
        print(pool.generate("tiny-llama-s", "hello", sampling={{"max_tokens": 4}}).text)
""")


def test_a_script_without_a_main_guard_is_told_what_to_do_instead_of_hanging(profiles, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED.format(scale=PROFILE_SCALE))
    started = time.monotonic()
    child = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert child.returncode != 0 and time.monotonic() - started < 120
    assert 'put that code under `if __name__ == "__main__":`' in child.stderr
    assert "its engine failed 1 time(s)" in child.stderr  # given up at once, not restarted three times


def test_a_model_that_is_not_on_this_machine_fails_when_the_pool_is_made_not_mid_run():
    from samullm_lc.errors import ConfigError

    with pytest.raises(ConfigError, match="never downloads models"):
        EnginePool(None, "1xA100-80GB", models=["meta-llama/Llama-2-7b-hf"], backend="vllm", progress=False)
