"""The engine pool on real vLLM engines on this machine, against the two ways a user would run the app by hand.

The app has two levels: ``a`` (tiny-llama-s) and ``b`` (tiny-llama-m) answer N prompts each; ``c``
(tiny-qwen2-m, the largest of the three) answers N prompts whose request i reads the outputs of ``a[i]`` and
``b[i]`` (its prompt is a template of its own length plus as many tokens as ``a[i]`` and ``b[i]`` generated).
The same app runs several ways, each timed from nothing running (process starts and model loads included) to
the last result of ``c``:

- **pool**: ``EnginePool(app, "2xcpu")`` with the default planner; one engine at a time per core, each in a
  worker process that the next engine on that core reuses.
- **sequential**: in topological order, a fresh process with both cores (``OMP_NUM_THREADS=2``) loads ``a``,
  runs its batch with one ``vllm.LLM.generate`` and exits (the unload); then ``b``, then ``c``.
- **sequential, one process** (``--one-process-sequential``): one process loads, runs and unloads
  (``shutdown_llm``) every model in turn.
- **sequential, one core** (``--one-core-sequential``): as sequential, pinned to one core.
- **all at once**: one process per model, all started together, each given both cores (``OMP_NUM_THREADS=2``);
  ``a`` and ``b`` generate as soon as they are loaded, ``c`` when both have finished.

Every variant sends the same prompts (token ids drawn from a per-request seed) with the same sampling
(temperature 1, per-request sampling seed, the node's ``max_tokens``) and the same engine settings
(``default_engine_settings``: 128 MiB KV cache, max_model_len 2048, chunked prefill off). Level-2 prompt lengths
follow each variant's own level-1 output lengths, as in a real app; the tokens each variant generated are
reported so a reader can check they did comparable work.

Overhead: one model (tiny-llama-m), the same requests through ``EnginePool(app, "1xcpu")`` and through one
``vllm.LLM.generate`` in a process pinned to the same core with the same engine settings. Both first answer
one warm-up request after the engine is ready; the generate phase is timed from handing over the requests to
the last result. Goal: at most 5% extra.

Estimation vs reality comes from the pool run's ``RunReport`` (end to end and per model, and the re-planning
decisions); its JSON and a Gantt chart of the actual run are saved next to the results page.

Writes ``docs/results/runtime-real.md``, ``runtime-real-report.json`` and ``runtime-real-gantt.png``.
It measures wall time on two shared cores: before each run it waits until ``/tmp/samullm_quiet`` is gone and
other processes leave the cores idle, and it reports the CPU time other processes took during each run.

Run: ``/work/main/.venv/bin/python benchmarks/runtime_real.py [--requests 300] [--repeats 3]`` (about 14 min;
the optional sequential variants run once each and add about 3 min).
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import common
import numpy as np

from samullm_lc.errors import RequestError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.planner.cluster import Cluster
from samullm_lc.runtime.backends.base import EngineSpec
from samullm_lc.runtime.backends.vllm_worker import cpu_pinning_env, pin_process
from samullm_lc.runtime.pool import EnginePool, default_engine_settings
from samullm_lc.runtime.report import RunReport
from samullm_lc.runtime.requests import GenerationResult

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
REPORT = RESULTS / "runtime-real.md"
RUN_REPORT = RESULTS / "runtime-real-report.json"
GANTT = RESULTS / "runtime-real-gantt.png"

# node: (model, shortest and longest template prompt in tokens, max_tokens, upstream nodes)
APP_NODES: dict[str, tuple[str, int, int, int, tuple[str, ...]]] = {
    "a": ("tiny-llama-s", 16, 128, 64, ()),
    "b": ("tiny-llama-m", 16, 128, 64, ()),
    "c": ("tiny-qwen2-m", 8, 32, 32, ("a", "b")),
}
OVERHEAD_MODEL = "tiny-llama-m"
OVERHEAD_MAX_TOKENS = 64
TOKEN_IDS = (10, 300)  # prompt token ids are drawn from [10, 300): inside every tiny model's vocabulary
OVERHEAD_GOAL = 0.05
TIMEOUT_SECONDS = 1800.0
QUIET_FLAG = Path(os.environ.get("SAMULLM_QUIET_FLAG", "/tmp/samullm_quiet"))  # another job on this machine asks for quiet while it exists
IDLE_CORES = 0.3  # the machine counts as idle when other processes use at most this many cores
IDLE_WAIT_SECONDS = 900.0
IDLE_SAMPLE_SECONDS = 3.0
DISTURBED_SHARE = 0.05  # a run during which other processes took more of the machine's CPU time is repeated
MAX_ATTEMPTS = 3
EXTRA_VARIANTS = ("sequential, one process", "sequential, one core")  # optional, run once


# ---- the workload: the same prompts and sampling for every variant -------------------------------------------
@dataclass(frozen=True)
class Workload:
    """The app and how each of its requests looks: prompt token ids and sampling, from per-request seeds."""

    app: AppGraph
    seed: int

    def request(self, node: str, i: int, upstream_tokens: int) -> tuple[list[int], dict[str, Any]]:
        """Prompt token ids and ``SamplingParams`` fields of request ``i`` of ``node``.

        The prompt is the node's template length plus ``upstream_tokens`` (what its upstream requests
        generated); its ids depend only on (seed, node, i), so every variant sends the same prefix.
        """
        index = [n.name for n in self.app.nodes].index(node)
        spec = self.app.node(node)
        length = int(spec.input_tokens[i]) + (upstream_tokens if spec.include_upstream_outputs else 0)
        rng = np.random.default_rng([self.seed, index, i])
        ids = rng.integers(*TOKEN_IDS, size=max(length, 1)).tolist()
        sampling = {"max_tokens": spec.max_tokens, "temperature": 1.0,
                    "seed": (self.seed * 16 + index) * 1_000_000 + i}
        return ids, sampling

    def batch(self, node: str, outputs: dict[str, list[int]]) -> tuple[list[list[int]], list[dict[str, Any]]]:
        """Every request of ``node``, its prompts grown by the upstream nodes' output tokens in ``outputs``."""
        spec = self.app.node(node)
        requests = [self.request(node, i, sum(outputs[u][i] for u in spec.depends_on))
                    for i in range(spec.num_requests)]
        return [p for p, _ in requests], [s for _, s in requests]


def build_app(n: int, seed: int) -> AppGraph:
    """The two-level app: ``a`` and ``b`` (N prompts each), ``c`` reading ``a[i]`` and ``b[i]``."""
    rng = np.random.default_rng(seed)
    nodes = [LLMNode(name=name, model=model, input_tokens=rng.integers(low, high + 1, n).tolist(),
                     max_tokens=max_tokens, depends_on=list(upstream))
             for name, (model, low, high, max_tokens, upstream) in APP_NODES.items()]
    return AppGraph(name="two-level", nodes=nodes,
                    description="a (tiny-llama-s) and b (tiny-llama-m) feed c (tiny-qwen2-m), request by request")


def engine_settings(model: str) -> dict[str, Any]:
    """The pool's per-engine settings for ``model`` (what every variant uses)."""
    spec = EngineSpec(engine_id=0, model=model, devices=(0,))
    return default_engine_settings(Cluster.parse("1xcpu"))(spec).model_dump()


def cores(count: int) -> list[int]:
    """The first ``count`` cores this process may run on."""
    return sorted(os.sched_getaffinity(0))[:count]


# ---- one vllm.LLM in a process of its own ---------------------------------------------------------------------
def engine_worker(conn: Connection, pinning: dict[str, Any]) -> None:
    """A plain ``vllm.LLM`` script, driven over ``conn``: load a model, generate a batch, unload, stop."""
    pin_process(pinning)
    import torch
    from vllm import SamplingParams

    from samullm_lc.runtime.vllm_engine import EngineSettings, shutdown_llm, start_llm

    llm = None
    while True:
        kind, payload = conn.recv()
        if kind == "load":
            started = time.perf_counter()
            llm = start_llm(EngineSettings(**payload))
            conn.send(("ready", time.perf_counter() - started, torch.get_num_threads()))
        elif kind == "generate":
            prompts, samplings = payload
            started = time.perf_counter()
            outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                                   [SamplingParams(**s) for s in samplings], use_tqdm=False)
            conn.send(("done", time.perf_counter() - started, [len(o.outputs[0].token_ids) for o in outputs],
                       [len(o.prompt_token_ids) for o in outputs]))
        elif kind in ("unload", "stop"):
            if llm is not None:
                shutdown_llm(llm)
                llm = None
            conn.send(("unloaded",))
            if kind == "stop":
                return


class EngineProcess:
    """The parent's handle on one ``engine_worker`` process."""

    def __init__(self, core_count: int) -> None:
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        chosen = cores(core_count)
        pinning = {"env": cpu_pinning_env(chosen), "cores": chosen}
        self.process = context.Process(target=engine_worker, args=(child, pinning), daemon=True)
        self.process.start()
        child.close()
        self.threads = 0
        self.load_seconds: list[float] = []

    def send(self, kind: str, payload: Any = None) -> None:
        self.conn.send((kind, payload))

    def receive(self) -> tuple:
        message = self.conn.recv()
        if message[0] == "ready":
            self.load_seconds.append(message[1])
            self.threads = message[2]
        return message

    def call(self, kind: str, payload: Any = None) -> tuple:
        """Send one command and wait for its answer."""
        self.send(kind, payload)
        return self.receive()

    def stop(self) -> None:
        self.call("stop")
        self.process.join(timeout=60)


# ---- the variants ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One variant's run: end-to-end seconds and what every node did."""

    seconds: float
    output_tokens: dict[str, int]
    prompt_tokens: dict[str, int]
    failed: int = 0
    note: str = ""
    foreign_cpu_seconds: float = 0.0  # CPU time other processes on the machine used meanwhile


@dataclass
class Variant:
    """Every repeat of one way of running the app."""

    name: str
    description: str
    runs: list[Run] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Median end-to-end seconds over the repeats."""
        return statistics.median(r.seconds for r in self.runs)


def _run_record(seconds: float, outputs: dict[str, list[int]], prompts: dict[str, list[int]], note: str) -> Run:
    return Run(seconds=seconds, output_tokens={k: int(sum(v)) for k, v in outputs.items()},
               prompt_tokens={k: int(sum(v)) for k, v in prompts.items()}, note=note)


def run_sequential(workload: Workload, core_count: int, *, one_process: bool = False) -> Run:
    """Each model in topological order on ``core_count`` cores: load, generate its batch, unload.

    By default each model gets a fresh process that exits after its batch (unload = exit, as a script per
    model would); ``one_process`` loads and unloads every model in one process instead.
    """
    order = workload.app.topological_order
    started = time.perf_counter()
    outputs: dict[str, list[int]] = {}
    prompts: dict[str, list[int]] = {}
    phases = []
    engine = EngineProcess(core_count) if one_process else None
    for name in order:
        begun = time.perf_counter()
        current = engine or EngineProcess(core_count)
        current.call("load", engine_settings(workload.app.node(name).model))
        ready = time.perf_counter() - begun
        _, seconds, outputs[name], prompts[name] = current.call("generate", workload.batch(name, outputs))
        phases.append(f"{name}: ready after {ready:.1f} s, generate {seconds:.1f} s")
        if name != order[-1] and one_process:
            current.call("unload")
        elif name != order[-1]:
            current.stop()
    elapsed = time.perf_counter() - started
    (engine or current).stop()
    return _run_record(elapsed, outputs, prompts, f"{current.threads} threads; " + "; ".join(phases))


def run_all_at_once(workload: Workload, core_count: int) -> Run:
    """One process per model, all started together with ``core_count`` cores each; a node generates once its
    model is loaded and its upstream nodes have finished."""
    app = workload.app
    started = time.perf_counter()
    engines = {name: EngineProcess(core_count) for name in app.topological_order}
    for name, engine in engines.items():
        engine.send("load", engine_settings(app.node(name).model))
    loaded: set[str] = set()
    generating: set[str] = set()
    outputs: dict[str, list[int]] = {}
    prompts: dict[str, list[int]] = {}
    phases: dict[str, str] = {}
    while len(outputs) < len(engines):
        for name in app.topological_order:
            ready = name in loaded and all(u in outputs for u in app.node(name).depends_on)
            if ready and name not in generating:
                generating.add(name)
                engines[name].send("generate", workload.batch(name, outputs))
        by_conn = {engine.conn: name for name, engine in engines.items()}
        for conn in wait([e.conn for n, e in engines.items() if n not in outputs]):
            name = by_conn[conn]
            message = engines[name].receive()
            if message[0] == "ready":
                loaded.add(name)
                phases[name] = f"{name}: ready at {time.perf_counter() - started:.1f} s"
            elif message[0] == "done":
                outputs[name], prompts[name] = message[2], message[3]
                phases[name] += f", generate {message[1]:.1f} s, done at {time.perf_counter() - started:.1f} s"
    elapsed = time.perf_counter() - started
    for engine in engines.values():
        engine.stop()
    threads = {e.threads for e in engines.values()}
    return _run_record(elapsed, outputs, prompts, f"{'/'.join(map(str, threads))} threads each; "
                       + "; ".join(phases[n] for n in app.topological_order))


class PoolAppRun:
    """Submits the workload to a pool: roots at once, request i of a node when its upstream requests i finished."""

    def __init__(self, pool: EnginePool, workload: Workload) -> None:
        self.pool = pool
        self.workload = workload
        self.app = workload.app
        self.results: dict[str, list[GenerationResult | RequestError | None]] = {
            n.name: [None] * n.num_requests for n in self.app.nodes}
        self.prompt_lengths: dict[str, list[int]] = {n.name: [0] * n.num_requests for n in self.app.nodes}
        self._missing = sum(n.num_requests for n in self.app.nodes)
        self._lock = threading.Lock()
        self._done = threading.Event()

    def start(self) -> PoolAppRun:
        for node in self.app.nodes:
            if not node.depends_on:
                for i in range(node.num_requests):
                    self._submit(node.name, i, 0)
        return self

    def wait(self, timeout: float) -> None:
        if not self._done.wait(timeout):
            raise TimeoutError(f"the pool did not finish the app in {timeout} s")

    def _submit(self, name: str, i: int, upstream_tokens: int) -> None:
        ids, sampling = self.workload.request(name, i, upstream_tokens)
        self.prompt_lengths[name][i] = len(ids)
        future = self.pool.submit(self.app.node(name).model, np.asarray(ids), sampling=sampling, node=name)
        future.add_done_callback(lambda f, name=name, i=i: self._finished(name, i, f))

    def _finished(self, name: str, i: int, future: Future | None, error: RequestError | None = None) -> None:
        outcome = error if future is None else (future.exception() or future.result())
        ready = []
        with self._lock:
            self.results[name][i] = outcome
            self._missing -= 1
            for downstream in self.app.downstream(name):
                upstream = [self.results[u][i] for u in self.app.node(downstream).depends_on]
                if all(o is not None for o in upstream):
                    ready.append((downstream, upstream))
        for downstream, upstream in ready:
            failed = [o for o in upstream if not isinstance(o, GenerationResult)]
            if failed:
                self._finished(downstream, i, None, RequestError(f"{downstream}[{i}]: upstream failed: {failed[0]}"))
            else:
                self._submit(downstream, i, sum(o.output_tokens for o in upstream))
        if self._missing == 0:
            self._done.set()

    def output_tokens(self, name: str) -> list[int]:
        return [o.output_tokens if isinstance(o, GenerationResult) else 0 for o in self.results[name]]

    def failures(self) -> list[str]:
        return [f"{name}[{i}]: {o}" for name, outcomes in self.results.items()
                for i, o in enumerate(outcomes) if not isinstance(o, GenerationResult)]


def run_pool(workload: Workload, profiles: dict) -> tuple[Run, RunReport]:
    """The app through ``EnginePool`` on both cores with the default planner."""
    started = time.perf_counter()
    with EnginePool(workload.app, "2xcpu", profiles=profiles, progress=False) as pool:
        run = PoolAppRun(pool, workload).start()
        run.wait(TIMEOUT_SECONDS)
        elapsed = time.perf_counter() - started
        pool.join()
    report = pool.report()
    failures = run.failures()
    outputs = {n: run.output_tokens(n) for n in workload.app.topological_order}
    record = _run_record(elapsed, outputs, run.prompt_lengths,
                         f"{len(report.replans)} planning decisions, {len(report.engines)} engines started")
    record.failed = len(failures)
    if failures:
        record.note += f"; {len(failures)} failed, first: {failures[0][:200]}"
    return record, report


# ---- overhead: one model through the pool vs one generate call ------------------------------------------------
@dataclass
class Overhead:
    """Generate-phase and total seconds of the pool and of one ``generate`` call, per repeat."""

    requests: int
    pool_generate: list[float] = field(default_factory=list)
    pool_total: list[float] = field(default_factory=list)
    plain_generate: list[float] = field(default_factory=list)
    plain_total: list[float] = field(default_factory=list)
    pool_output_tokens: int = 0
    plain_output_tokens: int = 0
    foreign_cpu_seconds: list[float] = field(default_factory=list)

    def add(self, side: str, generate: float, total: float, tokens: int, foreign: float) -> None:
        """Record one measurement of ``side`` (``pool`` or ``plain``)."""
        getattr(self, f"{side}_generate").append(generate)
        getattr(self, f"{side}_total").append(total)
        setattr(self, f"{side}_output_tokens", tokens)
        self.foreign_cpu_seconds.append(foreign)

    @property
    def extra(self) -> float:
        """Median pool generate seconds over median plain generate seconds, minus 1."""
        return statistics.median(self.pool_generate) / statistics.median(self.plain_generate) - 1


def overhead_workload(n: int, seed: int) -> Workload:
    """One node on ``OVERHEAD_MODEL``: a warm-up request (index 0) and ``n`` measured ones."""
    rng = np.random.default_rng(seed + 1)
    node = LLMNode(name="m", model=OVERHEAD_MODEL, input_tokens=rng.integers(16, 129, n + 1).tolist(),
                   max_tokens=OVERHEAD_MAX_TOKENS)
    return Workload(app=AppGraph(name="one-model", nodes=[node]), seed=seed)


def overhead_pool(workload: Workload, profiles: dict) -> tuple[float, float, int]:
    """(generate seconds, total seconds, output tokens) of the requests through a one-core pool."""
    n = workload.app.node("m").num_requests
    requests = [workload.request("m", i, 0) for i in range(n)]
    started = time.perf_counter()
    with EnginePool(workload.app, "1xcpu", profiles={OVERHEAD_MODEL: profiles[OVERHEAD_MODEL]},
                    progress=False) as pool:
        warmup, sampling = requests[0]
        pool.submit(OVERHEAD_MODEL, np.asarray(warmup), sampling=sampling, node="m").result(TIMEOUT_SECONDS)
        begin = time.perf_counter()
        futures = [pool.submit(OVERHEAD_MODEL, np.asarray(p), sampling=s, node="m") for p, s in requests[1:]]
        results = [f.result(TIMEOUT_SECONDS) for f in futures]
        end = time.perf_counter()
    return end - begin, end - started, sum(r.output_tokens for r in results)


def overhead_plain(workload: Workload) -> tuple[float, float, int]:
    """(generate seconds, total seconds, output tokens) of one ``generate`` call in a process on one core."""
    prompts, samplings = workload.batch("m", {})
    started = time.perf_counter()
    engine = EngineProcess(1)
    engine.call("load", engine_settings(OVERHEAD_MODEL))
    engine.call("generate", (prompts[:1], samplings[:1]))
    begin = time.perf_counter()
    _, _, outputs, _ = engine.call("generate", (prompts[1:], samplings[1:]))
    end = time.perf_counter()
    engine.stop()
    return end - begin, end - started, sum(outputs)


# ---- the report -----------------------------------------------------------------------------------------------
def machine() -> str:
    """The machine line, with vLLM's version."""
    import vllm

    return common.machine(f"vLLM {vllm.__version__} (CPU)")


def _seconds(values: list[float]) -> str:
    text = f"{statistics.median(values):.1f}"
    return text + (f" ({', '.join(f'{v:.1f}' for v in values)})" if len(values) > 1 else "")


def _ratio(baseline: Variant, pool: Variant) -> str:
    """Baseline seconds over pool seconds, said in words."""
    ratio = baseline.seconds / pool.seconds
    return (f"**{ratio:.2f}x** ({'the pool is faster' if ratio > 1 else 'the pool is slower'}: "
            f"{baseline.seconds:.1f} s against the pool's {pool.seconds:.1f} s)")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def app_table(app: AppGraph) -> list[str]:
    from samullm_lc.tinymodels import TINY_MODELS

    lines = ["| node | model | hidden x layers | vocabulary | requests | template prompt tokens | max_tokens | reads |",
             "|---|---|---|---:|---:|---|---:|---|"]
    for node in app.nodes:
        spec = TINY_MODELS[node.model]
        lines.append(f"| {node.name} | {node.model} | {spec.hidden_size} x {spec.num_layers} | {spec.vocab_size} | "
                     f"{node.num_requests} | {min(node.input_tokens)}-{max(node.input_tokens)} | {node.max_tokens} | "
                     f"{', '.join(node.depends_on) or '-'} |")
    return lines


def variants_table(variants: list[Variant], pool: Variant, app: AppGraph) -> list[str]:
    names = app.topological_order
    lines = ["| variant | end-to-end s | pool speedup | " + " | ".join(f"{n} prompt / output tokens" for n in names)
             + " | failed | other CPU s |", "|---|---:|---:|" + "---:|" * len(names) + "---:|---:|"]
    for variant in variants:
        run = variant.runs[0]
        cells = " | ".join(f"{run.prompt_tokens[n]:,} / {run.output_tokens[n]:,}" for n in names)
        speedup = "-" if variant is pool else f"{variant.seconds / pool.seconds:.2f}x"
        foreign = ", ".join(f"{r.foreign_cpu_seconds:.1f}" for r in variant.runs)
        lines.append(f"| {variant.name} | {_seconds([r.seconds for r in variant.runs])} | {speedup} | {cells} | "
                     f"{sum(r.failed for r in variant.runs)} | {foreign} |")
    return lines


def estimation_section(report: RunReport) -> list[str]:
    lines = [(f"- End to end: estimated **{report.estimated_seconds:.1f} s**, actual **{report.seconds:.1f} s** "
             f"(error {_pct(report.estimation_error)}; the estimate is taken at the first plan, on the pool's "
             "clock, which starts when the pool does)."), "",
             "| model | requests | output tokens | estimated finish s | actual finish s | error |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in report.models:
        estimated = f"{m.estimated_finish_seconds:.1f}" if m.estimated_finish_seconds is not None else "-"
        actual = f"{m.last_finish_seconds:.1f}" if m.last_finish_seconds is not None else "-"
        lines.append(f"| {m.model} | {m.requests_done}/{m.requests_expected} | {m.output_tokens:,} | {estimated} | "
                     f"{actual} | {_pct(m.finish_error)} |")
    lines += ["", "Planning decisions (time on the pool's clock, why, and the stage it started):", "",
              "| at s | why | planning s | estimated remaining s | stage |", "|---:|---|---:|---:|---|"]
    for r in report.replans:
        lines.append(f"| {r.at_seconds:.1f} | {r.reason} | {r.planning_seconds:.2f} | "
                     f"{r.estimated_remaining_seconds:.1f} | {'; '.join(r.stage) or 'nothing to run'} |")
    lines += ["", "Engines (devices are cores):", "", "| model | cores | started s | ready s | stopped s | requests |",
              "|---|---|---:|---:|---:|---:|"]
    for e in sorted(report.engines, key=lambda e: e.started_seconds):
        ready = f"{e.ready_seconds:.1f}" if e.ready_seconds is not None else "-"
        lines.append(f"| {e.model} | {e.devices} | {e.started_seconds:.1f} | {ready} | {e.stopped_seconds:.1f} | "
                     f"{e.requests_done} |")
    return lines


def core_time_table(report: RunReport) -> list[str]:
    """Per core: seconds loading engines, serving, idle, and the idle gaps, up to the last result."""
    end = report.seconds
    lines = ["| core | loading s | serving s | idle s | idle gaps |", "|---|---:|---:|---:|---|"]
    for core in sorted({d for e in report.engines for d in e.devices}):
        spans = sorted((e for e in report.engines if core in e.devices), key=lambda e: e.started_seconds)
        loading = serving = 0.0
        gaps, covered_until = [], 0.0
        for span in spans:
            start, stop = min(span.started_seconds, end), min(span.stopped_seconds, end)
            ready = min(span.ready_seconds if span.ready_seconds is not None else stop, stop)
            loading += ready - start
            serving += stop - ready
            if start - covered_until > 0.5:
                gaps.append((covered_until, start))
            covered_until = max(covered_until, stop)
        if end - covered_until > 0.5:
            gaps.append((covered_until, end))
        idle = sum(b - a for a, b in gaps)
        lines.append(f"| {core} | {loading:.1f} | {serving:.1f} | {idle:.1f} | "
                     f"{', '.join(f'{a:.1f}-{b:.1f} s' for a, b in gaps) or '-'} |")
    return lines


def render(args: argparse.Namespace, app: AppGraph, variants: list[Variant], report: RunReport, report_run: int,
           overhead: Overhead | None, host: str, wall: float, command: str) -> str:
    pool = next(v for v in variants if v.name == "pool")
    sequential = next(v for v in variants if v.name == "sequential")
    at_once = next(v for v in variants if v.name == "all at once")
    repeats = len(pool.runs)
    beats = pool.seconds < sequential.seconds and pool.seconds < at_once.seconds
    lines = [
        "# Engine pool on real engines",
        "",
        f"Generated by `benchmarks/runtime_real.py` on {host}, {datetime.date.today().isoformat()}; "
        f"{wall / 60:.1f} min in all. The pool, sequential and all-at-once variants ran {repeats} "
        f"time{'s' if repeats > 1 else ''}"
        + (", interleaved (median shown, each run in parentheses)" if repeats > 1 else " (one run each)")
        + ("; the extra sequential variants ran once, as context." if len(variants) > 3 else ".")
        + " Other jobs share this machine: each run waited until none asked for quiet or kept a core busy, a run "
        f"during which other processes still took more than {DISTURBED_SHARE:.0%} of the CPU time was run again "
        f"(at most {MAX_ATTEMPTS} times), and `other CPU s` is what they took during the runs that count.",
        "",
        "## Summary",
        "",
        f"- Pool vs sequential (load, generate, unload one model at a time on both cores): {_ratio(sequential, pool)}.",
        f"- Pool vs all at once (every model loaded together, each engine given both cores): {_ratio(at_once, pool)}.",
        f"- The pool must beat both: **{'met' if beats else 'not met'}**.",
    ]
    if overhead is not None:
        lines.append(f"- Overhead, one model, {overhead.requests} requests, pool vs one `LLM.generate` on the same "
                     f"core and settings: **{overhead.extra:+.1%}** in the generate phase (goal at most "
                     f"+{OVERHEAD_GOAL:.0%}: {'met' if overhead.extra <= OVERHEAD_GOAL else 'not met'}).")
    lines.append(f"- Estimation: end to end {_pct(report.estimation_error)}; per model finish "
                 + ", ".join(f"{m.model} {_pct(m.finish_error)}" for m in report.models) + ".")
    lines += [
        "",
        "## The app",
        "",
        (f"Two levels, {app.node('a').num_requests} requests per node, seed {args.seed}. Request i of `c` reads "
        "request i of `a` and of `b`: its prompt is its template plus as many tokens as `a[i]` and `b[i]` "
        "generated (synthetic ids; only the lengths follow the app). Prompt ids and sampling seeds are per "
        "request, so every variant sends the same template prefixes with the same sampling (temperature 1, the "
        "node's `max_tokens`); the tiny models have random weights, so outputs end at EOS with probability about "
        "1/vocabulary per token and most hit `max_tokens`."),
        "",
        *app_table(app),
        "",
        ("Engine settings everywhere: the pool's `default_engine_settings` (float32, 128 MiB KV cache, "
        "`max_model_len` 2048, chunked prefill off, `enforce_eager`), in-process engine "
        "(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), `VLLM_CPU_OMP_THREADS_BIND=nobind` with `OMP_NUM_THREADS` set to the "
        "cores a process gets."),
        "",
        "## End to end",
        "",
        ("Seconds from nothing running (process starts, `import vllm` and model loads included) to the last result "
        "of `c`; engine shutdown after that is not counted. `pool speedup` is the variant's (median) seconds over "
        "the pool's. Token columns are the totals of the first run (every run of a variant generated the same "
        "tokens: sampling is seeded per request); prompt tokens of `c` follow each variant's own level-1 outputs."),
        "",
        *variants_table(variants, pool, app),
        "",
        "Variants:",
        "",
    ]
    for variant in variants:
        lines.append(f"- **{variant.name}**: {variant.description} First run: {variant.runs[0].note}.")
    if overhead is not None:
        lines += [
            "",
            "## Overhead",
            "",
            (f"{overhead.requests} requests to {OVERHEAD_MODEL} (template prompts 16-128 tokens, `max_tokens` "
            f"{OVERHEAD_MAX_TOKENS}, temperature 1, per-request seeds) after one warm-up request, on core "
            f"{cores(1)[0]}: through `EnginePool(app, \"1xcpu\")` (an app graph of the warm-up plus these requests) "
            "and through one `LLM.generate` call in a process pinned to that core with the same engine settings. "
            "`generate phase` runs from handing the requests over to the last result (engine ready and warm); "
            "`total` includes process start and model load. The pool's driver thread runs in the client's process, "
            "which is not pinned."),
            "",
            "| | generate phase s | total s | output tokens |",
            "|---|---:|---:|---:|",
            (f"| pool | {_seconds(overhead.pool_generate)} | {_seconds(overhead.pool_total)} | "
            f"{overhead.pool_output_tokens:,} |"),
            (f"| one `LLM.generate` | {_seconds(overhead.plain_generate)} | {_seconds(overhead.plain_total)} | "
            f"{overhead.plain_output_tokens:,} |"),
            (f"| pool extra | **{overhead.extra:+.1%}** | "
            f"{statistics.median(overhead.pool_total) / statistics.median(overhead.plain_total) - 1:+.1%} | |"),
            "",
            (f"Runs alternate pool, generate, pool, ...; other processes used "
            f"{', '.join(f'{x:.1f}' for x in overhead.foreign_cpu_seconds)} CPU s during them."),
        ]
    lines += [
        "",
        "## Estimation vs reality (pool run)",
        "",
        (f"From the pool's `RunReport` of its median run (run {report_run + 1}): [JSON]({RUN_REPORT.name}), "
        f"[Gantt chart of the actual run]({GANTT.name}) (cores x seconds, one colour per model)."),
        "",
        *estimation_section(report),
        "",
        f"![Actual run]({GANTT.name})",
        "",
        ("Where each core's time went in this run, up to the last result (an engine is loading from its start to "
        "ready, then serving until it stops; idle is no engine on the core):"),
        "",
        *core_time_table(report),
        "",
        *common.reproduce(command),
    ]
    return "\n".join(lines)


# ---- interference: other jobs share these two cores --------------------------------------------------------
def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def wait_until_idle() -> None:
    """Wait while another job asks for quiet, then (up to ``IDLE_WAIT_SECONDS``) until the cores are idle."""
    deadline = time.monotonic() + IDLE_WAIT_SECONDS
    while True:
        if QUIET_FLAG.exists():
            time.sleep(20.0)
            continue
        busy, own = busy_cpu_seconds(), own_cpu_seconds()
        time.sleep(IDLE_SAMPLE_SECONDS)
        cores_used = ((busy_cpu_seconds() - busy) - (own_cpu_seconds() - own)) / IDLE_SAMPLE_SECONDS
        if cores_used <= IDLE_CORES:
            return
        if time.monotonic() > deadline:
            print("   the cores did not become idle; measuring anyway", flush=True)
            return
        print(f"   other processes use {cores_used:.1f} cores; waiting", flush=True)
        time.sleep(20.0)


def measure(label: str, function: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``function`` once the machine is idle; its result and the CPU seconds other processes used meanwhile.

    A run during which other processes took more than ``DISTURBED_SHARE`` of the machine is repeated (up to
    ``MAX_ATTEMPTS`` runs in all; the last one counts).
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        wait_until_idle()
        print(f"-- {label} ...", flush=True)
        started, busy, own = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()
        result = function()
        elapsed = time.perf_counter() - started
        foreign = max(0.0, (busy_cpu_seconds() - busy) - (own_cpu_seconds() - own))
        print(f"-- {label}: {elapsed:.1f} s; other processes used {foreign:.1f} CPU s", flush=True)
        if foreign <= DISTURBED_SHARE * len(cores(2)) * elapsed or attempt == MAX_ATTEMPTS:
            return result, foreign
        print("   disturbed by other processes: running it again", flush=True)
    raise AssertionError("unreachable")


# ---- main -----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per node of the two-level app")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant (the median is reported)")
    parser.add_argument("--overhead-requests", type=int, default=400)
    parser.add_argument("--overhead-repeats", type=int, default=3)
    parser.add_argument("--one-process-sequential", action="store_true",
                        help="also run sequential with every model in one process")
    parser.add_argument("--one-core-sequential", action="store_true", help="also run sequential on one core")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    args = parser.parse_args()

    from samullm_lc.profiling.pool_profiles import pool_profiles

    host = machine()
    started = time.perf_counter()
    app = build_app(args.requests, args.seed)
    workload = Workload(app=app, seed=args.seed)
    profiles = pool_profiles(app.models())
    variants = [
        Variant("pool", "`EnginePool(app, \"2xcpu\")`, default planner (`search`); one engine at a time per core, "
                "each in a worker process the next engine on that core reuses; requests of `c` submitted as "
                "their upstream requests finish."),
        Variant("sequential", "for a, b, c in turn, a fresh process on both cores (2 OpenMP threads) loads the "
                "model, runs one `LLM.generate` over its batch and exits (the unload); the next starts after it."),
        Variant("all at once", "three processes started together, each on both cores (2 OpenMP threads): a and b "
                "generate once loaded; c (loaded meanwhile) generates once a and b have finished."),
    ]
    if args.one_process_sequential:
        variants.append(Variant("sequential, one process", "as sequential, but one process on both cores loads, "
                                "runs and unloads (`shutdown_llm`) every model in turn (one `import vllm`)."))
    if args.one_core_sequential:
        variants.append(Variant("sequential, one core", "as sequential, each process pinned to one core "
                                "(1 OpenMP thread)."))
    runners: dict[str, Callable[[], Run]] = {
        "sequential": lambda: run_sequential(workload, 2),
        "all at once": lambda: run_all_at_once(workload, 2),
        "sequential, one process": lambda: run_sequential(workload, 2, one_process=True),
        "sequential, one core": lambda: run_sequential(workload, 1),
    }
    reports: list[RunReport] = []
    for repeat in range(args.repeats):
        for variant in variants:
            if repeat and variant.name in EXTRA_VARIANTS:
                continue  # the extra variants run once: they only give context
            if variant.name == "pool":
                (run, report), foreign = measure(f"pool, run {repeat + 1}", lambda: run_pool(workload, profiles))
                reports.append(report)
                print(report.summary(), flush=True)
            else:
                run, foreign = measure(f"{variant.name}, run {repeat + 1}", runners[variant.name])
            run.foreign_cpu_seconds = foreign
            print(f"   {run}", flush=True)
            variant.runs.append(run)
    pool_runs = variants[0].runs
    median_run = sorted(range(len(pool_runs)), key=lambda k: pool_runs[k].seconds)[(len(pool_runs) - 1) // 2]

    overhead = None
    if not args.skip_overhead:
        overhead = Overhead(requests=args.overhead_requests)
        one_model = overhead_workload(args.overhead_requests, args.seed)
        for repeat in range(args.overhead_repeats):
            (generate, total, tokens), foreign = measure(f"overhead pool, run {repeat + 1}",
                                                         lambda: overhead_pool(one_model, profiles))
            overhead.add("pool", generate, total, tokens, foreign)
            (generate, total, tokens), foreign = measure(f"overhead generate, run {repeat + 1}",
                                                         lambda: overhead_plain(one_model))
            overhead.add("plain", generate, total, tokens, foreign)
            print(f"   pool {overhead.pool_generate[-1]:.2f} s, plain {overhead.plain_generate[-1]:.2f} s", flush=True)

    command = "/work/main/.venv/bin/python benchmarks/runtime_real.py"
    defaults = {"requests": 300, "repeats": 3, "overhead_requests": 400, "overhead_repeats": 3, "seed": 0}
    for name, default in defaults.items():
        if getattr(args, name) != default:
            command += f" --{name.replace('_', '-')} {getattr(args, name)}"
    for flag in ("one_process_sequential", "one_core_sequential", "skip_overhead"):
        if getattr(args, flag):
            command += f" --{flag.replace('_', '-')}"
    text = render(args, app, variants, reports[median_run], median_run, overhead, host, time.perf_counter() - started, command)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(text)
        reports[median_run].save(RUN_REPORT)
        reports[median_run].save_gantt(GANTT)
        print(f"wrote {REPORT.relative_to(ROOT)}, {RUN_REPORT.relative_to(ROOT)}, {GANTT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
