"""The engine pool on real vLLM engines on this machine, against the two ways a user would run the app by hand.

The app has two levels: ``a`` (tiny-llama-s) and ``b`` (tiny-llama-m) answer N prompts each; ``c``
(tiny-qwen2-m, the largest of the three) answers N prompts whose request i reads the outputs of ``a[i]`` and
``b[i]`` (its prompt is a template of its own length plus as many tokens as ``a[i]`` and ``b[i]`` generated).
The same app runs several ways, each timed from nothing running (process starts and model loads included) to
the last result of ``c``:

- **pool**: ``EnginePool(app, "2xcpu")`` with the default planner; one engine at a time per core, each in a
  worker process that the next engine on that core reuses.
- **sequential**: in topological order, a fresh engine process with both cores (``OMP_NUM_THREADS=2``) loads
  ``a``, is handed its whole batch at once and exits once it is answered (the unload); then ``b``, then ``c``.
- **sequential, one process** (``--one-process-sequential``): one process loads, runs and unloads every model
  in turn.
- **sequential, one core** (``--one-core-sequential``): as sequential, pinned to one core.
- **all at once**: one engine process per model, all started together, each given both cores
  (``OMP_NUM_THREADS=2``); ``a`` and ``b`` generate as soon as they are loaded, ``c`` when both have finished.

The by-hand variants run on the pool's own engine processes (``VllmBackend``, the worker that steps
``vllm.LLM``'s engine), driven without a planner (``ByHand``), so they differ from the pool only in what runs
when and where.

Every variant sends the same prompts (token ids drawn from a per-request seed: ``SyntheticRequests`` with
``per_request``) with the same sampling (temperature 1, per-request sampling seed, the node's ``max_tokens``) and the same engine settings
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
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import numpy as np

from samullm_lc.errors import RequestError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.planner.cluster import Cluster
from samullm_lc.runtime.app_runner import AppRun, Outcome, SyntheticRequests
from samullm_lc.runtime.backends.base import EngineReady, EngineSpec, EngineStopped, Event, RequestDone
from samullm_lc.runtime.backends.vllm_backend import VllmBackend
from samullm_lc.runtime.backends.vllm_worker import cpu_pinning, pin_process
from samullm_lc.runtime.pool import EnginePool, default_engine_settings
from samullm_lc.runtime.report import RunReport
from samullm_lc.runtime.requests import GenerationResult, Request

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
REQUEST_ID_STRIDE = 1_000_000  # request i of the k-th node has id k * this + i on the by-hand variants' engines
OVERHEAD_GOAL = 0.05
TIMEOUT_SECONDS = 1800.0
EXTRA_VARIANTS = ("sequential, one process", "sequential, one core")  # optional, run once


# ---- the app: the same prompts and sampling for every variant ---------------------------------------------------
def build_app(n: int, seed: int) -> AppGraph:
    """The two-level app: ``a`` and ``b`` (N prompts each), ``c`` reading ``a[i]`` and ``b[i]``."""
    rng = np.random.default_rng(seed)
    nodes = [LLMNode(name=name, model=model, input_tokens=rng.integers(low, high + 1, n).tolist(),
                     max_tokens=max_tokens, depends_on=list(upstream))
             for name, (model, low, high, max_tokens, upstream) in APP_NODES.items()]
    return AppGraph(name="two-level", nodes=nodes,
                    description="a (tiny-llama-s) and b (tiny-llama-m) feed c (tiny-qwen2-m), request by request")


def same_requests(app: AppGraph, seed: int) -> SyntheticRequests:
    """Prompt ids and sampling seeds per request: every variant sends the same template prefixes, sampled alike."""
    return SyntheticRequests(app, seed=seed, per_request=True)


def cores(count: int) -> list[int]:
    """The first ``count`` cores this process may run on."""
    return sorted(os.sched_getaffinity(0))[:count]


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


def _run_record(seconds: float, outcomes: dict[str, list[Outcome]], note: str) -> Run:
    """A run from every request's outcome, by node."""
    done = {name: [o for o in results if isinstance(o, GenerationResult)] for name, results in outcomes.items()}
    failures = [f"{name}[{i}]: {o}" for name, results in outcomes.items() for i, o in enumerate(results)
                if not isinstance(o, GenerationResult)]
    if failures:
        note += f"; {len(failures)} failed, first: {failures[0][:200]}"
    return Run(seconds=seconds, output_tokens={k: sum(r.output_tokens for r in v) for k, v in done.items()},
               prompt_tokens={k: sum(r.prompt_tokens for r in v) for k, v in done.items()}, failed=len(failures),
               note=note)


class ByHand:
    """What a user would script by hand, on the pool's own engine processes (``VllmBackend``) with no planner:
    an engine per node on ``core_count`` cores, started and stopped when the variant says, each node's requests
    handed to its engine in one batch once its upstream nodes have finished."""

    def __init__(self, requests: SyntheticRequests, core_count: int) -> None:
        self.requests = requests
        self.app = requests.app
        self.order = self.app.topological_order
        self.devices = tuple(range(core_count))
        self.backend = self.new_backend()
        self.started = time.perf_counter()
        self.ready_at: dict[str, float] = {}
        self.submitted_at: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self.outcomes: dict[str, list[Outcome | None]] = {n.name: [None] * n.num_requests for n in self.app.nodes}
        self._missing = {n.name: n.num_requests for n in self.app.nodes}

    @staticmethod
    def new_backend() -> VllmBackend:
        return VllmBackend(default_engine_settings(Cluster.parse("1xcpu")), device_kind="cpu")

    def now(self) -> float:
        return time.perf_counter() - self.started

    def start(self, name: str) -> None:
        """Start the node's engine (engine id: the node's place in the topological order)."""
        model = self.app.node(name).model
        self.backend.start_engine(EngineSpec(engine_id=self.order.index(name), model=model, devices=self.devices))

    def submit(self, name: str) -> None:
        """Hand the engine every request of the node (its upstream nodes have finished)."""
        upstream = {u: [o.output_tokens for o in self.outcomes[u]] for u in self.app.node(name).depends_on}
        k, model = self.order.index(name), self.app.node(name).model
        requests = [Request(id=k * REQUEST_ID_STRIDE + i, model=model, kind="tokens", prompt=prompt, sampling=sampling)
                    for i, (prompt, sampling) in enumerate(self.requests.batch(name, upstream))]
        self.submitted_at[name] = self.now()
        self.backend.submit(k, requests)

    def stop(self, name: str) -> None:
        """Stop the node's engine and wait until it is gone."""
        self.backend.stop_engine(self.order.index(name))
        self.until(lambda: self.order.index(name) not in self.backend.pids())

    def submit_ready(self) -> bool:
        """Submit every node whose engine is ready and whose upstream nodes have finished; whether every node
        has finished."""
        for name in self.order:
            upstream_done = all(self.finished(u) for u in self.app.node(name).depends_on)
            if name in self.ready_at and name not in self.submitted_at and upstream_done:
                self.submit(name)
        return all(self.finished(name) for name in self.order)

    def until(self, condition: Callable[[], bool]) -> None:
        """Take the backend's events until ``condition`` holds (checked after each batch of them)."""
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engines did not finish in {TIMEOUT_SECONDS} s")
            for event in self.backend.wait(timeout=1.0):
                self._take(event)

    def _take(self, event: Event) -> None:
        name = self.order[event.engine_id]
        if isinstance(event, EngineReady):
            self.ready_at[name] = self.now()
        elif isinstance(event, RequestDone):
            i = event.request_id % REQUEST_ID_STRIDE
            self.outcomes[name][i] = event.result or RequestError(f"{name}[{i}]: {event.error}")
            self._missing[name] -= 1
            if not self._missing[name]:
                self.done_at[name] = self.now()
        elif isinstance(event, EngineStopped) and event.failure:
            raise RuntimeError(f"the engine of {name} failed: {event.failure}")

    def finished(self, name: str) -> bool:
        return name in self.done_at

    def record(self, note: str) -> Run:
        """The run so far (call when the last node has finished, before the engines stop)."""
        return _run_record(self.now(), self.outcomes, note)  # type: ignore[arg-type]


def run_sequential(requests: SyntheticRequests, core_count: int, *, one_process: bool = False) -> Run:
    """Each model in topological order on ``core_count`` cores: load, generate its batch, unload.

    By default each model gets a fresh engine process that exits after its batch (unload = exit, as a script
    per model would); ``one_process`` loads and unloads every model in one process instead.
    """
    run = ByHand(requests, core_count)
    phases = []
    for name in run.order:
        begun = run.now()
        run.start(name)
        run.until(lambda name=name: name in run.ready_at)
        run.submit(name)
        run.until(lambda name=name: run.finished(name))
        phases.append(f"{name}: ready after {run.ready_at[name] - begun:.1f} s, "
                      f"generate {run.done_at[name] - run.submitted_at[name]:.1f} s")
        if name != run.order[-1]:
            run.stop(name)
            if not one_process:  # wait for the process to exit, as the next script would
                run.backend.close()
                run.backend = run.new_backend()
    record = run.record(f"{core_count} cores; " + "; ".join(phases))
    run.backend.close()
    return record


def run_all_at_once(requests: SyntheticRequests, core_count: int) -> Run:
    """One engine process per model, all started together with ``core_count`` cores each; a node generates once
    its model is loaded and its upstream nodes have finished."""
    run = ByHand(requests, core_count)
    for name in run.order:
        run.start(name)
    run.until(run.submit_ready)
    record = run.record(f"{core_count} cores each; " + "; ".join(
        f"{n}: ready at {run.ready_at[n]:.1f} s, generate {run.done_at[n] - run.submitted_at[n]:.1f} s, "
        f"done at {run.done_at[n]:.1f} s" for n in run.order))
    run.backend.close()
    return record


def run_pool(requests: SyntheticRequests, profiles: dict) -> tuple[Run, RunReport]:
    """The app through ``EnginePool`` on both cores with the default planner."""
    started = time.perf_counter()
    with EnginePool(requests.app, "2xcpu", profiles=profiles, progress=False) as pool:
        outcomes = AppRun(pool, requests.app, requests=requests).start().wait(TIMEOUT_SECONDS)
        elapsed = time.perf_counter() - started
        pool.join()
    report = pool.report()
    note = f"{len(report.replans)} planning decisions, {len(report.engines)} engines started"
    return _run_record(elapsed, outcomes, note), report


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


def overhead_requests(n: int, seed: int) -> SyntheticRequests:
    """One node on ``OVERHEAD_MODEL``: a warm-up request (index 0) and ``n`` measured ones."""
    rng = np.random.default_rng(seed + 1)
    node = LLMNode(name="m", model=OVERHEAD_MODEL, input_tokens=rng.integers(16, 129, n + 1).tolist(),
                   max_tokens=OVERHEAD_MAX_TOKENS)
    return same_requests(AppGraph(name="one-model", nodes=[node]), seed)


def overhead_pool(requests: SyntheticRequests, profiles: dict) -> tuple[float, float, int]:
    """(generate seconds, total seconds, output tokens) of the requests through a one-core pool."""
    (warmup, warmup_sampling), *measured = requests.batch("m", {})
    started = time.perf_counter()
    with EnginePool(requests.app, "1xcpu", profiles={OVERHEAD_MODEL: profiles[OVERHEAD_MODEL]},
                    progress=False) as pool:
        pool.submit(OVERHEAD_MODEL, warmup, sampling=warmup_sampling, node="m").result(TIMEOUT_SECONDS)
        begin = time.perf_counter()
        futures = [pool.submit(OVERHEAD_MODEL, p, sampling=s, node="m") for p, s in measured]
        results = [f.result(TIMEOUT_SECONDS) for f in futures]
        end = time.perf_counter()
    return end - begin, end - started, sum(r.output_tokens for r in results)


_plain_llm = None  # the engine of ``plain_generate``'s process, kept until the process exits


def plain_generate(settings: dict[str, Any], prompts: list[list[int]], samplings: list[dict[str, Any]]
                   ) -> tuple[float, list[int]]:
    """In its own process: load the model, answer the first request (warm-up), then time one ``LLM.generate``
    over the others; (seconds, output tokens per request)."""
    global _plain_llm
    from vllm import SamplingParams

    from samullm_lc.runtime.vllm_engine import EngineSettings, start_llm

    _plain_llm = start_llm(EngineSettings(**settings))
    inputs = [{"prompt_token_ids": p} for p in prompts]
    params = [SamplingParams(**s) for s in samplings]
    _plain_llm.generate(inputs[:1], params[:1], use_tqdm=False)
    begin = time.perf_counter()
    outputs = _plain_llm.generate(inputs[1:], params[1:], use_tqdm=False)
    return time.perf_counter() - begin, [len(o.outputs[0].token_ids) for o in outputs]


def plain_shutdown() -> None:
    """Shut ``plain_generate``'s engine down."""
    from samullm_lc.runtime.vllm_engine import shutdown_llm

    shutdown_llm(_plain_llm)


def overhead_plain(requests: SyntheticRequests) -> tuple[float, float, int]:
    """(generate seconds, total seconds, output tokens) of one ``LLM.generate`` call in a process pinned to one
    core with the pool's engine settings."""
    batch = requests.batch("m", {})
    spec = EngineSpec(engine_id=0, model=OVERHEAD_MODEL, devices=(0,))
    settings = default_engine_settings(Cluster.parse("1xcpu"))(spec).model_dump()
    started = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=pin_process,
                             initargs=(cpu_pinning(cores(1)),)) as process:
        seconds, outputs = process.submit(plain_generate, settings, [p.tolist() for p, _ in batch],
                                          [s.vllm_kwargs() for _, s in batch]).result(TIMEOUT_SECONDS)
        total = time.perf_counter() - started
        process.submit(plain_shutdown).result(TIMEOUT_SECONDS)
    return seconds, total, sum(outputs)


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
        f"during which other processes still took more than {common.DISTURBED_SHARE:.0%} of the CPU time was run again "
        f"(at most {common.MAX_ATTEMPTS} times), and `other CPU s` is what they took during the runs that count.",
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
    requests = same_requests(app, args.seed)
    profiles = pool_profiles(app.models())
    variants = [
        Variant("pool", "`EnginePool(app, \"2xcpu\")`, default planner (`search`); one engine at a time per core, "
                "each in a worker process the next engine on that core reuses; requests of `c` submitted as "
                "their upstream requests finish."),
        Variant("sequential", "for a, b, c in turn, a fresh engine process on both cores (2 OpenMP threads) loads "
                "the model, is handed its whole batch at once and exits once it is answered (the unload); the next "
                "starts after it."),
        Variant("all at once", "three engine processes started together, each on both cores (2 OpenMP threads): a "
                "and b generate once loaded; c (loaded meanwhile) generates once a and b have finished."),
    ]
    if args.one_process_sequential:
        variants.append(Variant("sequential, one process", "as sequential, but one process on both cores loads, "
                                "runs and unloads every model in turn (one `import vllm`)."))
    if args.one_core_sequential:
        variants.append(Variant("sequential, one core", "as sequential, each process pinned to one core "
                                "(1 OpenMP thread)."))
    runners: dict[str, Callable[[], Run]] = {
        "sequential": lambda: run_sequential(requests, 2),
        "all at once": lambda: run_all_at_once(requests, 2),
        "sequential, one process": lambda: run_sequential(requests, 2, one_process=True),
        "sequential, one core": lambda: run_sequential(requests, 1),
    }
    reports: list[RunReport] = []
    for repeat in range(args.repeats):
        for variant in variants:
            if repeat and variant.name in EXTRA_VARIANTS:
                continue  # the extra variants run once: they only give context
            if variant.name == "pool":
                (run, report), foreign = common.measure(f"pool, run {repeat + 1}", lambda: run_pool(requests, profiles))
                reports.append(report)
                print(report.summary(), flush=True)
            else:
                run, foreign = common.measure(f"{variant.name}, run {repeat + 1}", runners[variant.name])
            run.foreign_cpu_seconds = foreign
            print(f"   {run}", flush=True)
            variant.runs.append(run)
    pool_runs = variants[0].runs
    median_run = sorted(range(len(pool_runs)), key=lambda k: pool_runs[k].seconds)[(len(pool_runs) - 1) // 2]

    overhead = None
    if not args.skip_overhead:
        overhead = Overhead(requests=args.overhead_requests)
        one_model = overhead_requests(args.overhead_requests, args.seed)
        for repeat in range(args.overhead_repeats):
            (generate, total, tokens), foreign = common.measure(f"overhead pool, run {repeat + 1}",
                                                         lambda: overhead_pool(one_model, profiles))
            overhead.add("pool", generate, total, tokens, foreign)
            (generate, total, tokens), foreign = common.measure(f"overhead generate, run {repeat + 1}",
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
