"""The engine pool on a Ray cluster of two simulated nodes (one core each) with the real vLLM CPU engine: a model
per node with the single-node pool's results, an engine actor killed and a node removed mid-run."""

import threading
import time

import pytest

ray = pytest.importorskip("ray")

from backend_events import events_until  # noqa: E402
from ray.cluster_utils import Cluster as RayCluster  # noqa: E402

from samullm_lc.errors import ConfigError  # noqa: E402
from samullm_lc.graph.app_graph import AppGraph, LLMNode  # noqa: E402
from samullm_lc.langchain.session_options import cluster_of  # noqa: E402
from samullm_lc.planner import Cluster  # noqa: E402
from samullm_lc.runtime.backends.base import EngineReady, EngineSpec, EngineStopped, RequestDone  # noqa: E402
from samullm_lc.runtime.backends.ray_backend import RayBackend  # noqa: E402
from samullm_lc.runtime.pool import EnginePool, default_engine_settings  # noqa: E402
from samullm_lc.runtime.requests import Request, SamplingSpec  # noqa: E402

pytestmark = pytest.mark.engine
MODELS = ["tiny-llama-s", "tiny-llama-m"]
PROFILE_SCALE = 0.2
OBJECT_STORE_BYTES = 80 * 2**20
GREEDY = {"max_tokens": 24, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def profiles():
    from samullm_lc.profiling.pool_profiles import pool_profiles

    return pool_profiles(MODELS, scale=PROFILE_SCALE)


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head without devices and two nodes of one core each, on this machine; this process is connected."""
    cluster = RayCluster(initialize_head=True, head_node_args={"num_cpus": 0,
                                                               "object_store_memory": OBJECT_STORE_BYTES})
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES) for _ in range(2)]
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def test_a_ray_address_is_described_as_its_nodes_and_a_cluster_ray_lacks_is_refused_with_the_fix(ray_cluster,
                                                                                                  profiles):
    cluster, _ = ray_cluster
    assert cluster_of(f"ray://{cluster.address}") == Cluster.parse("2x1xcpu")
    with pytest.raises(ConfigError, match="needs 3 Ray node"):
        EnginePool(None, "3x1xcpu", models=MODELS, backend="ray", profiles=profiles, progress=False)
    with pytest.raises(ConfigError, match="have fewer"):
        EnginePool(None, "1x2xcpu", models=MODELS, backend="ray", profiles=profiles, progress=False)


def test_a_stopped_engines_actor_hosts_the_next_engine_on_its_node(ray_cluster):
    cluster = Cluster.parse("2x1xcpu")
    backend = RayBackend(default_engine_settings(cluster), cluster)
    try:
        backend.start_engine(EngineSpec(engine_id=0, model=MODELS[0], devices=(1,)))
        fresh = next(e for e in events_until(backend, EngineReady, 0) if isinstance(e, EngineReady))
        first = backend.actors()[0]
        backend.stop_engine(0)
        events_until(backend, EngineStopped, 0)
        backend.start_engine(EngineSpec(engine_id=1, model=MODELS[1], devices=(1,)))
        reused = next(e for e in events_until(backend, EngineReady, 1) if isinstance(e, EngineReady))
        assert backend.actors()[1]._actor_id == first._actor_id
        assert fresh.fresh_process and not reused.fresh_process and reused.load_seconds < fresh.load_seconds
        backend.submit(1, [Request(id=7, model=MODELS[1], kind="text", prompt="hello again",
                                   sampling=SamplingSpec(max_tokens=5, ignore_eos=True))])
        done = [e for e in events_until(backend, RequestDone, 1) if isinstance(e, RequestDone)]
        assert done[0].error is None and done[0].result.completions[0].num_tokens == 5
        # An engine the waiting actor cannot host (another share of the core) gets a new actor; the waiting one,
        # whose placement group holds the node's only core, is let go first instead of blocking it.
        backend.stop_engine(1)
        events_until(backend, EngineStopped, 1)
        backend.start_engine(EngineSpec(engine_id=2, model=MODELS[0], devices=(1,), memory_fraction=0.5))
        events_until(backend, EngineReady, 2)
        assert backend.actors()[2]._actor_id != first._actor_id
    finally:
        backend.close()
    assert not backend.actors()


def _prompts(n: int) -> list[tuple[str, str]]:
    return [(MODELS[i % 2], f"request {i}: tell me about item {i * 7}") for i in range(n)]


def _pair(n: int) -> AppGraph:
    """The two models side by side, ``n`` requests each: the first plan sees both (a node per model)."""
    return AppGraph(name="pair", nodes=[LLMNode(name=m, model=m, input_tokens=[16] * n, max_tokens=GREEDY["max_tokens"])
                                        for m in MODELS])


def _run(pool: EnginePool, prompts: list[tuple[str, str]], during=None, *, to_nodes: bool = False) -> list[str]:
    futures = [pool.submit(model, prompt, sampling=GREEDY, node=model if to_nodes else None)
               for model, prompt in prompts]
    if during is not None:
        deadline = time.monotonic() + 300
        while sum(f.done() for f in futures) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        during(pool)
    return [f.result(600).text for f in futures]


def _plan_nodes(report, cluster: Cluster) -> dict[str, set[int]]:
    nodes: dict[str, set[int]] = {}
    for engine in report.engines:
        nodes.setdefault(engine.model, set()).update(cluster.node_of(d) for d in engine.devices)
    return nodes


def test_two_models_run_one_per_node_with_the_single_node_pools_results(ray_cluster, profiles):
    prompts = _prompts(24)
    cluster = Cluster.parse("2x1xcpu")
    seen_nodes: dict[int, str] = {}  # engine -> the Ray node its actor runs on, for every engine while it runs
    running = threading.Event()

    def watch(pool):
        while running.is_set():
            for engine_id, actor in pool.backend.actors().items():
                if engine_id not in seen_nodes:
                    try:
                        seen_nodes[engine_id] = ray.get(actor.node_id.remote(), timeout=60)
                    except ray.exceptions.RayError:
                        pass  # stopped meanwhile
            time.sleep(0.2)

    with EnginePool(_pair(12), cluster, backend="ray", profiles=profiles, progress=False) as pool:
        running.set()
        watcher = threading.Thread(target=watch, args=(pool,))
        watcher.start()
        try:
            on_ray = _run(pool, prompts, to_nodes=True)
        finally:
            running.clear()
            watcher.join()
    report = pool.report()
    with EnginePool(_pair(12), "2xcpu", profiles=profiles, progress=False) as pool:
        local = _run(pool, prompts, to_nodes=True)
    assert on_ray == local
    nodes = _plan_nodes(report, cluster)
    assert sorted(nodes.values(), key=min) == [{0}, {1}]  # one model per node
    assert len(set(seen_nodes.values())) == 2  # and Ray put the two models' actors on two different nodes


def _run_disrupted(disrupt, profiles) -> tuple[list[str], object]:
    """60 requests over both nodes, ``disrupt(pool)`` once 12 have finished; every result present once."""
    prompts = _prompts(60)
    with EnginePool(None, "2x1xcpu", models=MODELS, backend="ray", profiles=profiles, progress=False,
                    max_in_flight=8) as pool:
        texts = _run(pool, prompts, during=disrupt)
    report = pool.report()
    assert len(texts) == len(prompts) and all(texts)
    assert sum(m.requests_done for m in report.models) == len(prompts)
    assert all(m.requests_failed == 0 for m in report.models)
    return texts, report


def test_an_engine_actor_killed_mid_run_ends_with_every_result_once_and_a_replan(ray_cluster, profiles):
    def kill_one(pool):
        _, actor = sorted(pool.backend.actors().items())[0]
        ray.kill(actor, no_restart=True)

    _, report = _run_disrupted(kill_one, profiles)
    assert len(report.engine_failures) == 1 and "died" in report.engine_failures[0]
    assert any(r.reason.startswith("engine ") and "died" in r.reason for r in report.replans)


def test_the_drop_in_runs_an_unchanged_chain_on_the_ray_cluster_as_on_one_machine(ray_cluster, profiles):
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableParallel
    from langchain_openai import ChatOpenAI

    import samullm_lc as samullm

    cluster, _ = ray_cluster
    prompt = ChatPromptTemplate.from_messages([("user", "Answer briefly: {question}")])
    clients = {m: ChatOpenAI(model=m, base_url="http://127.0.0.1:9/v1", api_key="EMPTY", temperature=0, max_tokens=12)
               for m in MODELS}
    chain = RunnableParallel({m: prompt | client for m, client in clients.items()})
    inputs = [{"question": f"what is item {i}?"} for i in range(8)]
    answers = {}
    for devices in (f"ray://{cluster.address}", "2xcpu"):
        with samullm.offline(models=MODELS, devices=devices, profiles=profiles, progress=False) as session:
            answers[devices] = [{m: out[m].content for m in MODELS} for out in chain.batch(inputs)]
            assert session.pool.backend.name == ("ray" if devices.startswith("ray") else "vllm")
    assert answers[f"ray://{cluster.address}"] == answers["2xcpu"]


def test_a_node_removed_mid_run_ends_with_every_result_once_and_a_replan_on_the_node_left(ray_cluster, profiles):
    cluster, nodes = ray_cluster

    def remove_a_node(pool):
        _, actor = sorted(pool.backend.actors().items())[0]
        node_id = ray.get(actor.node_id.remote(), timeout=60)
        cluster.remove_node(next(n for n in nodes if n.node_id == node_id))

    _, report = _run_disrupted(remove_a_node, profiles)
    lost = next(r for r in report.replans if r.reason.startswith("Ray node") and "lost" in r.reason)
    after = [e for e in report.engines if e.started_seconds >= lost.at_seconds]
    assert after and len({d for e in after for d in e.devices}) == 1  # the rest ran on the node left
