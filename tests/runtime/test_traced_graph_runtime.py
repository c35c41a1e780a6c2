"""The runtime on traced (generalised) app graphs, on the `sim` backend: request-level reads in AppRun, a pool
started on a plan made before the run, and a traced graph that over- or under-estimated a node's calls."""

import threading
from collections import deque
from concurrent.futures import Future

import numpy as np
import pytest

from samullm_lc.errors import ConfigError, RequestError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.planner import Cluster, plan_app
from samullm_lc.runtime import planning
from samullm_lc.runtime.app_runner import AppRun, SyntheticRequests
from samullm_lc.runtime.pool import EnginePool
from samullm_lc.runtime.request_book import EXTRA_SUFFIX, RequestBook
from samullm_lc.runtime.requests import Completion, GenerationResult, Request, SamplingSpec

TOKENS = np.arange(100, 200)
SMALL, MEDIUM, LARGE = "Llama-2-7b-hf", "Llama-2-13b-hf", "Llama-2-70b-hf"


def _traced_app(n: int = 40) -> AppGraph:
    """A router (classify sends even inputs to `math`, odd ones to a 3-call `map` and its `reduce`) and a running
    summary chained over the inputs (each call reads the classification and the previous summary)."""
    even, odd = list(range(0, n, 2)), list(range(1, n, 2))
    return AppGraph(name="traced", num_inputs=n, nodes=[
        LLMNode(name="classify", model=SMALL, input_tokens=[50] * n, max_tokens=8, inputs=list(range(n))),
        LLMNode(name="math", model=MEDIUM, input_tokens=[80] * len(even), max_tokens=64, inputs=even,
                depends_on=["classify"], upstream_requests={"classify": [[i] for i in even]}),
        LLMNode(name="map", model=SMALL, input_tokens=[60] * (3 * len(odd)), max_tokens=64,
                inputs=[i for i in odd for _ in range(3)], depends_on=["classify"],
                upstream_requests={"classify": [[i] for i in odd for _ in range(3)]}),
        LLMNode(name="reduce", model=MEDIUM, input_tokens=[40] * len(odd), max_tokens=64, inputs=odd,
                depends_on=["map"], upstream_requests={"map": [[3 * j, 3 * j + 1, 3 * j + 2] for j in range(len(odd))]}),
        LLMNode(name="summary", model=SMALL, input_tokens=[30] * n, max_tokens=32, inputs=list(range(n)),
                depends_on=["classify"],
                upstream_requests={"classify": [[i] for i in range(n)], "summary": [[i - 1] if i else [] for i in range(n)]}),
    ])


class WatchedRequests(SyntheticRequests):
    """Synthetic requests that check, as each is made, that every request it reads has finished and that its
    prompt grows by exactly their outputs; ``WatchedPool`` tells it what finished."""

    def __init__(self, app: AppGraph) -> None:
        super().__init__(app, token_ids=TOKENS)
        self.reads = {n.name: app.request_reads(n.name) for n in app.nodes}
        self.outputs: dict[tuple[str, int], int] = {}
        self.made: list[tuple[str, int]] = []
        self.problems: list[str] = []
        self.current = threading.local()
        self.lock = threading.Lock()

    def request(self, name, i, upstream_tokens):
        with self.lock:
            read = [(u, int(idx[i])) for u, idx in self.reads[name] if idx[i] >= 0]
            missing = [key for key in read if key not in self.outputs]
            if missing:
                self.problems.append(f"{name}[{i}] made before {missing} finished")
            elif upstream_tokens != sum(self.outputs[key] for key in read):
                self.problems.append(f"{name}[{i}] grew by {upstream_tokens} tokens, not by what it reads")
            self.made.append((name, i))
        self.current.key = (name, i)
        return super().request(name, i, upstream_tokens)

    def finished(self, key: tuple[str, int], future: Future) -> None:
        with self.lock:
            self.outputs[key] = future.result().output_tokens if future.exception() is None else 0


class WatchedPool:
    """The pool as AppRun sees it, telling ``WatchedRequests`` when each request finished (before AppRun hears)."""

    def __init__(self, pool: EnginePool, requests: WatchedRequests) -> None:
        self.pool, self.requests = pool, requests

    def submit(self, model, prompt, **kwargs):
        key = self.requests.current.key
        future = self.pool.submit(model, prompt, **kwargs)
        future.add_done_callback(lambda f: self.requests.finished(key, f))
        return future


def test_a_traced_graph_runs_every_request_once_each_after_the_requests_it_reads():
    app = _traced_app()
    requests = WatchedRequests(app)
    with EnginePool(app, "2xA100-80GB", backend="sim", progress=False) as pool:
        outcomes = AppRun(WatchedPool(pool, requests), app, requests=requests).start().wait(120)
        assert pool.join(60)
    assert requests.problems == []
    assert sorted(requests.made) == sorted((n.name, i) for n in app.nodes for i in range(n.num_requests))
    assert all(isinstance(o, GenerationResult) for node in outcomes.values() for o in node)
    assert {name: len(node) for name, node in outcomes.items()} == {n.name: n.num_requests for n in app.nodes}
    report = pool.report()
    assert {m.model: (m.requests_done, m.requests_expected) for m in report.models} == {SMALL: (140, 140),
                                                                                       MEDIUM: (40, 40)}
    # a reduce call's prompt is its template plus its input's three map outputs
    assert outcomes["reduce"][2].prompt_tokens == 40 + sum(outcomes["map"][k].output_tokens for k in (6, 7, 8))


class DeferredPool:
    """Resolves submitted requests when told to, in order: 3 output tokens each, failing the ones named."""

    def __init__(self, failing: set[tuple[str, int]] = frozenset()) -> None:
        self.failing = failing
        self.pending: deque = deque()
        self.submitted: list[tuple[str, int]] = []
        self.counts: dict[str, int] = {}

    def submit(self, model, prompt, *, sampling, node):
        i = self.counts.get(node, 0)
        self.counts[node] = i + 1
        future: Future = Future()
        self.pending.append(((node, i), future, len(prompt)))
        self.submitted.append((node, i))
        return future

    def drain(self) -> None:
        while self.pending:
            key, future, prompt = self.pending.popleft()
            if key in self.failing:
                future.set_exception(RequestError(f"{key} failed"))
            else:
                future.set_result(GenerationResult(model="m", completions=[Completion(text="x", num_tokens=3)],
                                                   prompt_tokens=prompt))


def test_a_failed_read_fails_its_readers_with_the_cause_even_down_a_long_chain():
    n = 3000  # a failure spreading by recursion would pass Python's recursion limit
    app = AppGraph(name="chain", num_inputs=1, nodes=[
        LLMNode(name="step", model="m", input_tokens=[5] * n, max_tokens=8, inputs=[0] * n,
                upstream_requests={"step": [[i - 1] if i else [] for i in range(n)]}),
        LLMNode(name="other", model="m", input_tokens=[5], max_tokens=8, inputs=[0]),
    ])
    pool = DeferredPool(failing={("step", 2)})
    run = AppRun(pool, app).start()
    pool.drain()
    outcomes = run.wait(5)
    assert pool.submitted == [("step", 0), ("other", 0), ("step", 1), ("step", 2)]
    assert isinstance(outcomes["step"][1], GenerationResult) and isinstance(outcomes["other"][0], GenerationResult)
    assert all(isinstance(o, RequestError) for o in outcomes["step"][2:])
    assert "upstream failed" in str(outcomes["step"][-1]) and "('step', 2) failed" in str(outcomes["step"][-1])


def test_a_batch_of_synthetic_requests_grows_each_prompt_by_exactly_what_it_reads():
    app = _traced_app(6)
    requests = SyntheticRequests(app, token_ids=TOKENS)
    made = requests.batch("reduce", {"map": [1, 2, 3, 10, 20, 30, 100, 200, 300]})
    assert [len(prompt) for prompt, _ in made] == [40 + 6, 40 + 60, 40 + 600]
    with pytest.raises(ConfigError, match="its own earlier calls"):
        requests.batch("summary", {"classify": [1] * 6})


def _two_stage_app(n: int, per_input: int = 1) -> AppGraph:
    """A 70B drafter that fills both GPUs (its ``per_input`` drafts of an input traced), then a 13B judge reading
    the drafts of its input: the judge's model can only start once the drafter has finished."""
    return AppGraph(name="draft-judge", num_inputs=n, nodes=[
        LLMNode(name="draft", model=LARGE, input_tokens=[100] * (n * per_input), max_tokens=64,
                inputs=[i for i in range(n) for _ in range(per_input)]),
        LLMNode(name="judge", model=MEDIUM, input_tokens=[50] * n, max_tokens=16, inputs=list(range(n)),
                depends_on=["draft"], upstream_requests={"draft": [list(range(i * per_input, (i + 1) * per_input))
                                                                   for i in range(n)]}),
    ])


def test_a_pool_given_a_plan_starts_its_first_stage_at_once_without_planning_at_start(monkeypatch):
    app = _traced_app()
    plan = plan_app(app, Cluster.parse("2xA100-80GB"))
    calls = []
    monkeypatch.setattr(planning, "plan_app", lambda *a, **k: calls.append(a) or plan_app(*a, **k))
    with EnginePool(app, "2xA100-80GB", backend="sim", progress=False, plan=plan) as pool:
        outcomes = AppRun(pool, app, token_ids=TOKENS).start().wait(120)
        assert pool.join(60)
    assert calls == []  # no START planning: later plans are re-plans
    report = pool.report()
    assert report.replans[0].reason == "plan given to the pool" and report.initial_plan == plan
    assert all(r.reason != "start" for r in report.replans)
    first = {(e.plan.model, devices) for e in plan.stages[0].entries for devices in e.plan.replica_devices()}
    assert {(s.model, tuple(s.devices)) for s in report.engines if s.started_seconds == 0.0} == first
    assert all(isinstance(o, GenerationResult) for node in outcomes.values() for o in node)


def test_a_plan_that_does_not_fit_the_pool_is_refused_naming_the_fix():
    app = _traced_app()
    plan = plan_app(app, Cluster.parse("2xA100-80GB"))
    with pytest.raises(ConfigError, match="made for cluster 2xA100-80GB.*runs on 4xA100-80GB.*plan_app"):
        EnginePool(app, "4xA100-80GB", backend="sim", progress=False, plan=plan)
    other = _two_stage_app(10)
    with pytest.raises(ConfigError, match="does not fit app 'draft-judge'.*Llama-2-7b-hf"):
        EnginePool(other, "2xA100-80GB", backend="sim", progress=False, plan=plan)
    with pytest.raises(ConfigError, match="needs the app graph"):
        EnginePool(None, "2xA100-80GB", models=[SMALL], backend="sim", progress=False, plan=plan)


def test_a_node_the_graph_over_estimated_stops_holding_the_run_up_once_intake_is_finished():
    # Traced: 2 drafts per input. Actual: 1. The judge's requests wait for an engine the plan starts only once
    # the drafter has finished all its traced calls, which never come, until the client says so.
    n = 30
    app = _two_stage_app(n, per_input=2)
    with EnginePool(app, "2xA100-80GB", backend="sim", progress=False) as pool:
        drafts = [pool.submit(LARGE, [7] * 100, sampling={"max_tokens": 64}, node="draft") for _ in range(n)]
        outputs = [f.result(60).output_tokens for f in drafts]
        judges = [pool.submit(MEDIUM, [7] * (50 + k), sampling={"max_tokens": 16}, node="judge") for k in outputs]
        assert not pool.join(2)  # waiting for drafts that never come
        pool.finish_intake()
        assert pool.join(60)
    assert all(f.result(0).model == MEDIUM for f in judges)
    report = pool.report()
    assert {m.model: (m.requests_done, m.requests_expected) for m in report.models} == {LARGE: (n, n),
                                                                                       MEDIUM: (n, n)}
    assert any(r.reason.startswith(f"intake finished: {n} request(s)") for r in report.replans)
    drafter = [s for s in report.engines if s.model == LARGE]
    judge = [s for s in report.engines if s.model == MEDIUM]
    assert max(s.stopped_seconds for s in drafter) <= min(s.started_seconds for s in judge) + 1e-9


def test_calls_beyond_a_nodes_traced_count_go_beyond_the_graph_and_complete():
    n, actual = 20, 30
    app = _two_stage_app(n)
    with EnginePool(app, "2xA100-80GB", backend="sim", progress=False) as pool:
        drafts = [pool.submit(LARGE, [7] * 100, sampling={"max_tokens": 64}, node="draft") for _ in range(actual)]
        outputs = [f.result(60).output_tokens for f in drafts]
        judges = [pool.submit(MEDIUM, [7] * (50 + k), sampling={"max_tokens": 16}, node="judge") for k in outputs]
        assert all(f.result(60).model == MEDIUM for f in judges)
        pool.finish_intake()  # nothing was over-estimated: no re-plan for it
        assert pool.join(60)
    report = pool.report()
    assert {m.model: (m.requests_done, m.requests_expected) for m in report.models} == {LARGE: (actual, actual),
                                                                                       MEDIUM: (actual, actual)}
    assert not any(r.reason.startswith("intake finished") for r in report.replans)


def test_finishing_intake_shrinks_each_node_to_what_it_was_given_and_the_planned_app_with_it():
    app = _two_stage_app(4, per_input=2)  # 8 drafts, 4 judges reading two drafts each
    book = RequestBook(app, app.models())

    def take(i: int, model: str, node: str):
        request = Request(id=i, model=model, kind="tokens", prompt=[1, 2], sampling=SamplingSpec(max_tokens=8),
                          node=node)
        record = book.register(request, Future())
        book.enqueue(record)
        return record

    drafts = [take(i, LARGE, "draft") for i in range(3)]
    judges = [take(10 + i, MEDIUM, "judge") for i in range(2)]
    assert book.finish_intake() == {LARGE: 5, MEDIUM: 2}
    assert book.finish_intake() == {}
    planned = book.planned_app()
    assert planned.num_inputs == 4
    assert [(n.name, n.num_requests) for n in planned.nodes] == [("draft", 3), ("judge", 2)]
    assert planned.node("judge").upstream_requests == {"draft": [[0, 1], [2]]}  # draft 3 never came
    assert take(20, LARGE, "draft").request.node == LARGE + EXTRA_SUFFIX  # later requests go beyond the graph
    result = GenerationResult(model=LARGE, completions=[Completion(text="x", num_tokens=3)], prompt_tokens=2)
    finished = [book.complete(record, result, observe=True) for record in [*drafts, *judges]]
    assert finished == [False, False, False, False, True]  # the drafter still has its extra request
