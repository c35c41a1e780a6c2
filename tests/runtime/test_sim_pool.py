"""The pool's scheduling logic on the `sim` backend: simulated engines on a virtual clock, GPU scale."""

import asyncio
import threading
import tracemalloc

import numpy as np
import pytest

from samullm_lc.errors import RequestError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.graph.paper_apps import chain_summary_app
from samullm_lc.runtime.app_runner import AppRun
from samullm_lc.runtime.pool import EnginePool
from samullm_lc.runtime.requests import GenerationResult
from tests.runtime.apps import ensemble_app

TOKENS = np.arange(100, 200)


def _device_overlaps(report) -> list[tuple]:
    """Pairs of whole-device engines that held one device at the same time."""
    clashes = []
    spans = report.engines
    for i, a in enumerate(spans):
        for b in spans[i + 1:]:
            shared = set(a.devices) & set(b.devices)
            at_once = a.started_seconds < b.stopped_seconds - 1e-9 and b.started_seconds < a.stopped_seconds - 1e-9
            whole = a.memory_fraction + b.memory_fraction > 1.0
            if shared and at_once and whole:
                clashes.append((a, b))
    return clashes


def test_two_level_app_on_8_gpus_answers_every_request_once_and_replans_as_models_finish():
    app = ensemble_app(300, ["Llama-2-7b-hf", "Mistral-7B-Instruct-v0.2", "Llama-2-13b-hf"], "Llama-2-70b-hf")
    with EnginePool(app, "8xA100-80GB", backend="sim", progress=False) as pool:
        outcomes = AppRun(pool, app, token_ids=TOKENS).start().wait(120)
        assert pool.join(60)
    report = pool.report()
    assert all(isinstance(o, GenerationResult) for node in outcomes.values() for o in node)
    assert {m.model: m.requests_done for m in report.models} == {m: 300 for m in app.models()}
    reasons = [r.reason for r in report.replans]
    assert reasons[0] == "start" and any("finished" in r for r in reasons[1:])
    assert not _device_overlaps(report)
    assert report.seconds > 0 and report.estimated_seconds is not None
    assert abs(report.estimation_error) < 0.5
    # the fuser's prompts grew by the members' outputs
    fused = outcomes["fuse"][0]
    members = sum(outcomes[m][0].output_tokens for m in app.models()[:3])
    assert fused.prompt_tokens == 64 + members


def test_64_simulated_gpus_run_a_wide_app():
    members = ["Llama-2-7b-hf", "Mistral-7B-Instruct-v0.2", "Llama-2-13b-hf", "vicuna-13b-v1.5", "mpt-7b-chat"]
    app = ensemble_app(400, members, "Llama-2-70b-hf")
    with EnginePool(app, "64xA100-80GB", backend="sim", progress=False) as pool:
        AppRun(pool, app, token_ids=TOKENS).start().wait(120)
        pool.join(60)
    report = pool.report()
    assert sum(m.requests_done for m in report.models) == 400 * 6
    assert max(d for span in report.engines for d in span.devices) < 64
    assert not _device_overlaps(report)


def test_data_parallel_replicas_share_the_queued_requests():
    # 600 requests queued at once for one model planned on two replicas: the replica that is ready first
    # must not take them all (the planner counts on each replica doing about half).
    app = AppGraph(name="one", nodes=[LLMNode(name="a", model="Llama-2-7b-hf", input_tokens=[200] * 600,
                                              max_tokens=256)])
    with EnginePool(app, "2xA100-80GB", backend="sim", progress=False) as pool:
        AppRun(pool, app, token_ids=TOKENS).start().wait(120)
        assert pool.join(60)
    served = [span.requests_done for span in pool.report().engines]
    assert len(served) == 2 and sum(served) == 600
    assert min(served) >= 0.4 * 600


def test_engines_planned_to_share_a_gpu_run_on_it_together():
    # Two small models on one GPU: the planner gives each half of its memory; the pool must start both at
    # once (it used to start the second when the first stopped, which took 52.9 s against 33.0 s planned).
    rng = np.random.default_rng(0)
    app = AppGraph(name="two", nodes=[LLMNode(name=m, model=m, input_tokens=rng.integers(50, 300, 400).tolist(),
                                              max_tokens=256) for m in ("phi-2", "chatglm3-6b")])
    with EnginePool(app, "1xA100-80GB", backend="sim", progress=False) as pool:
        AppRun(pool, app, token_ids=TOKENS).start().wait(120)
        assert pool.join(60)
    report = pool.report()
    assert report.initial_plan.stages[0].entries[0].plan.memory_fraction == 0.5
    assert [(span.memory_fraction, span.started_seconds) for span in report.engines] == [(0.5, 0.0)] * 2
    assert not _device_overlaps(report)
    assert abs(report.estimation_error) < 0.05


def test_an_engine_preloaded_for_the_next_stage_loads_beside_the_running_one_and_waits():
    # Chain-summary at N = 100: the plan loads the 70B evaluator on 40% of the GPUs' memory while the
    # summariser runs on 60%; the pool starts both at once, sends the evaluator nothing until the summariser
    # is done, then keeps it (no second load).
    app = chain_summary_app(100, 0)
    with EnginePool(app, "8xA100-80GB", backend="sim", progress=False) as pool:
        AppRun(pool, app, token_ids=TOKENS).start().wait(120)
        assert pool.join(60)
    report = pool.report()
    evaluators = [span for span in report.engines if span.model == "Llama-2-70b-chat-hf"]
    summarisers = [span for span in report.engines if span.model == "vicuna-13b-v1.5"]
    assert [(span.started_seconds, span.memory_fraction, span.requests_done) for span in evaluators] == [(0.0, 0.4, 100)]
    assert {span.memory_fraction for span in summarisers} == {0.6}
    assert not _device_overlaps(report)
    models = {m.model: m for m in report.models}
    assert models["Llama-2-70b-chat-hf"].first_finish_seconds >= models["vicuna-13b-v1.5"].last_finish_seconds


def test_bad_requests_fail_alone():
    app = AppGraph(name="one", nodes=[LLMNode(name="a", model="Llama-2-7b-hf", input_tokens=[20] * 5, max_tokens=32)])
    with EnginePool(app, "1xA100-80GB", backend="sim", progress=False) as pool:
        good = [pool.submit("Llama-2-7b-hf", "tell me a story " * 3, sampling={"max_tokens": 16}) for _ in range(5)]
        bad = {
            "unknown model": pool.submit("no-such-model", "hi"),
            "empty prompt": pool.submit("Llama-2-7b-hf", ""),
            "bad sampling": pool.submit("Llama-2-7b-hf", "hi", sampling={"top_p": 0}),
            "unknown field": pool.submit("Llama-2-7b-hf", "hi", sampling={"temprature": 0.5}),
        }
        results = [f.result(30) for f in good]
    assert all(r.output_tokens >= 1 for r in results)
    for what, future in bad.items():
        with pytest.raises(RequestError) as info:
            future.result(1)
        assert "rejected" in str(info.value), what
    assert "no-such-model" in str(bad["unknown model"].exception())
    assert "temprature" in str(bad["unknown field"].exception())


def test_requests_beyond_the_app_graph_are_planned_as_they_arrive():
    with EnginePool(None, "4xA100-80GB", models=["Llama-2-7b-hf", "Llama-2-13b-hf"], backend="sim",
                    progress=False) as pool:
        first = [pool.submit("Llama-2-7b-hf", "a question " * 10) for _ in range(50)]
        [f.result(30) for f in first]
        later = [pool.submit("Llama-2-13b-hf", "another question " * 10) for _ in range(50)]
        assert all(f.result(30).model == "Llama-2-13b-hf" for f in later)
    reasons = [r.reason for r in pool.report().replans]
    assert any("beyond the app graph" in r and "Llama-2-13b-hf" in r for r in reasons)


def test_thousands_of_coroutines_and_threads_share_one_pool():
    with EnginePool(None, "2xA100-80GB", models=["Llama-2-7b-hf"], backend="sim", progress=False) as pool:
        async def many() -> list[GenerationResult]:
            return await asyncio.gather(*(pool.agenerate("Llama-2-7b-hf", f"question {i}") for i in range(2000)))

        threaded: list[GenerationResult] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            result = pool.generate("Llama-2-7b-hf", f"thread question {k}", timeout=60)
            with lock:
                threaded.append(result)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(50)]
        for t in threads:
            t.start()
        results = asyncio.run(many())
        for t in threads:
            t.join()
    assert len(results) == 2000 and len(threaded) == 50
    assert pool.report().models[0].requests_done == 2050


def test_100k_queued_requests_keep_the_driver_memory_bounded():
    n = 100_000
    tracemalloc.start()
    with EnginePool(None, "1xA100-80GB", models=["Llama-2-7b-hf"], backend="sim", progress=False,
                    max_in_flight=256) as pool:
        baseline = tracemalloc.get_traced_memory()[0]
        futures = [pool.submit("Llama-2-7b-hf", [7] * 16, sampling={"max_tokens": 4, "ignore_eos": True})
                   for _ in range(n)]
        queued = tracemalloc.get_traced_memory()[0] - baseline
        tracemalloc.stop()
        done = sum(1 for f in futures if f.result(300).output_tokens == 4)
        del futures
    assert done == n
    per_request = queued / n
    print(f"driver memory with {n} requests queued: {queued / 2**20:.1f} MiB ({per_request:.0f} B per request)")
    assert per_request < 4096


def test_the_run_report_round_trips_draws_the_actual_run_and_shows_progress(tmp_path):
    import io

    from rich.console import Console

    from samullm_lc.runtime.progress import ProgressDisplay
    from samullm_lc.runtime.report import RunReport

    app = ensemble_app(100, ["Llama-2-7b-hf", "Llama-2-13b-hf"], "Llama-2-7b-hf")
    with EnginePool(app, "4xA100-80GB", backend="sim", progress=False) as pool:
        AppRun(pool, app, token_ids=TOKENS).start().wait(60)
    report = pool.report()
    again = RunReport.model_validate_json(report.save(tmp_path / "report.json").read_text())
    assert again == report
    png = report.save_gantt(tmp_path / "actual.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spans = report.actual_plan().stages
    assert spans[0].start_seconds == 0.0 and spans[-1].end_seconds >= report.seconds - 1e-6
    text = report.summary(decisions=True)
    assert "Llama-2-13b-hf: 100/100 done" in text and "start ->" in text and "planned" in text
    assert "start ->" not in report.summary()  # the short one has the count of decisions, not the list
    assert all(r.actual_stage_seconds is not None for r in report.replans)
    screen = io.StringIO()
    display = ProgressDisplay(app.models(), enabled=True, console=Console(file=screen, force_terminal=True, width=120))
    display.start()
    display.update(report)
    display.stop()
    assert "Llama-2-13b-hf" in screen.getvalue() and "100/100" in screen.getvalue()
    record = next(m for m in report.models if m.model == "Llama-2-13b-hf")  # rates on the backend's (virtual) clock
    assert f"{record.output_tokens / report.elapsed_seconds:,.0f} tok/s" in screen.getvalue()


def test_a_node_that_leaves_mid_run_is_planned_around_and_every_request_completes_once():
    app = ensemble_app(600, ["Llama-2-7b-hf", "Mistral-7B-Instruct-v0.2", "Llama-2-13b-hf"], "Llama-2-70b-hf")
    with EnginePool(app, "2x4xA100-80GB", backend="sim", progress=False) as pool:
        pool.backend.lose_node_at(30.0, node=1)
        outcomes = AppRun(pool, app, token_ids=TOKENS).start().wait(120)
        assert pool.join(60)
    report = pool.report()
    assert all(isinstance(o, GenerationResult) for node in outcomes.values() for o in node)
    assert {m.model: m.requests_done for m in report.models} == {m: 600 for m in app.models()}
    lost = next(i for i, r in enumerate(report.replans) if "left the cluster" in r.reason)
    assert report.replans[lost].at_seconds == pytest.approx(30.0, abs=1.0)
    assert any("left the cluster" in f for f in report.engine_failures)
    assert any(d >= 4 for span in report.engines if span.started_seconds < 30.0 for d in span.devices)
    later = [span for span in report.engines if span.started_seconds > 30.0]
    assert later and all(d < 4 for span in later for d in span.devices)  # only node 0's devices after the loss
    assert not _device_overlaps(report)
