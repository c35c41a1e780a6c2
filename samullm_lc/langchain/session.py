"""``offline()``: a block inside which every LLM call of an unchanged LangChain pipeline runs on the engine pool.

    with samullm.offline(models={"judge": "Qwen/Qwen2.5-7B-Instruct"}) as run:
        results = chain.batch(inputs)
    print(run.report().summary())

The block owns a pool of engines (``EnginePool``): entering it makes the session the active one for every
thread and coroutine of the process (a ContextVar for this context and the ones it starts, plus the
process-wide innermost block for threads started some other way), and sets LangChain's own configuration
channel so a ``batch`` hands the pool every call it can make at once (``max_concurrency``). Leaving it stops
every engine; Ctrl-C fails what is outstanding first. The interception itself (``intercept.py``) is
installed once per process and does nothing outside a block.
"""

from __future__ import annotations

import contextvars
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Self

from samullm_lc.errors import ConfigError, SamullmError
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.langchain import sites
from samullm_lc.langchain.input_progress import InputProgress
from samullm_lc.langchain.interrupts import on_interrupt, restore_interrupt
from samullm_lc.langchain.session_options import (
    asks_for_tool_calls,
    check_tool_parser,
    cluster_of,
    concurrency_token,
    model_names,
)
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.plan import Plan
from samullm_lc.planner.planners import DEFAULT_PLANNER
from samullm_lc.runtime.backends.ray_nodes import RAY_SCHEME
from samullm_lc.runtime.engine_logs import TERMINAL, EngineLog
from samullm_lc.runtime.journal import Journal
from samullm_lc.runtime.pool import EnginePool, check_backend, check_models
from samullm_lc.runtime.report import RunReport
from samullm_lc.runtime.requests import GenerationResult

DEFAULT_MAX_CONCURRENCY = 1024
"""Calls a ``batch`` may have in flight at once inside a block (LangChain's ``max_concurrency``): enough to fill
every engine's batch, small enough that threads and queued prompts stay bounded."""

_current: contextvars.ContextVar[OfflineSession | None] = contextvars.ContextVar("samullm_offline", default=None)
_open_sessions: list[OfflineSession] = []  # innermost last: what threads outside the block's context see
_open_lock = threading.Lock()


BLOCK_ENDED = ("the offline() block this call was made in has ended (or is ending): make LLM calls inside the "
               "block, and let every task and thread that makes them finish before leaving it")
ActiveTokens = tuple[contextvars.Token, "contextvars.Token | None", contextvars.Token]
"""What ``activate`` set (the session, LangChain's concurrency setting, the call-site recorder), to undo it."""


class UnknownClientModelError(ConfigError):
    """A LangChain client names a model the block does not serve."""


def active_session() -> OfflineSession | None:
    """The session serving this thread or coroutine: its own block's, else the innermost open one."""
    session = _current.get()
    if session is not None:
        return session  # closed or not: a call made in a block's context never goes past it to the network
    with _open_lock:
        return _open_sessions[-1] if _open_sessions else None


class OfflineSession:
    """One ``offline()`` block: LangChain's LLM clients inside it are served by an in-process pool of vLLM engines.

    ``models`` maps the model names the clients use to weights (a Hugging Face id in the local cache, a model
    folder, or a tiny model's name); a list means each name is its own weights; None serves every client by
    its own model name. ``devices`` is a cluster such as ``"8xA100-80GB"`` or ``"2x8xA100-80GB"`` (default: the
    GPUs CUDA shows, else one CPU engine slot per core), or a Ray cluster's address, ``"ray://auto"`` or
    ``"ray://HOST:PORT"``: the engines then run as actors on its nodes (``backend="ray"``; ``ray_backend.py``).
    ``backend="ray"`` with a cluster string runs that cluster's shape on the Ray cluster this process is
    connected to. ``journal`` makes a rerun of an interrupted batch recompute only what
    had not finished. ``max_concurrency`` caps the calls in flight (LangChain's own setting). ``tool_parser``
    serves tool calls as ``vllm serve --enable-auto-tool-choice --tool-call-parser NAME`` would. ``profiles``
    gives measured engine profiles by model (otherwise each CPU model is profiled once and cached). Engines print
    to ``engine_log`` (default: a new file whose path is printed; ``runtime/engine_logs``), or with ``verbose`` here.

    Planning before the run: by default the first ``batch``/``abatch`` of a pipeline in the block first runs the
    pipeline on a sample of ``trace`` inputs (8 if True) with the stand-in model (no engine; ``tracing.py``),
    scales the traced graph to the batch, and starts the pool on it, so the planner sees the whole app before
    the real calls come. The sample runs the pipeline's own code a second time for those inputs: for code with
    side effects pass ``trace=False`` (plan from the calls as they arrive), ``graph=`` (an ``AppGraph`` or its
    file, e.g. from ``samullm.trace`` scaled to the run) or ``plan=`` (a ``Plan`` or its file from
    ``samullm.plan``, with the ``graph=`` it was made for).

    The session holds the pool, the model names clients may use, and what the block counted.
    """

    def __init__(
        self,
        models: Mapping[str, str] | Iterable[str] | None = None,
        *,
        devices: str | Cluster | None = None,
        journal: str | Path | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        backend: str = "vllm",
        planner: str = DEFAULT_PLANNER,
        progress: bool | None = None,
        verbose: bool = False,
        engine_log: str | Path | None = None,
        profiles: dict[str, Any] | None = None,
        tool_parser: str | None = None,
        seed: int = 0,
        trace: bool | int = True,
        graph: AppGraph | str | Path | None = None,
        plan: Plan | str | Path | None = None,
    ) -> None:
        from samullm_lc.langchain.tracing import DEFAULT_TRACE_SAMPLE

        self.names = model_names(models)
        self.tool_parser = check_tool_parser(tool_parser)
        if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
        self.max_concurrency = max_concurrency
        self.cluster = cluster_of(devices)
        if isinstance(devices, str) and devices.startswith(RAY_SCHEME):
            if backend not in ("vllm", "ray"):
                raise ConfigError(f"devices={devices!r} runs real engines on a Ray cluster; backend={backend!r} "
                                  "cannot: leave backend out")
            backend = "ray"  # engines on that Ray cluster (``cluster_of`` connected to it)
        self.backend = check_backend(backend)
        self._journal_path = journal
        self._pool_options = {"journal": None, "backend": backend, "planner": planner, "progress": progress,
                              "seed": seed}
        self._profiles = dict(profiles or {})
        self._log_option, self._log = (engine_log, verbose), None
        if isinstance(trace, bool) or not isinstance(trace, int) or trace < 1:
            if not isinstance(trace, bool):
                raise ConfigError(f"trace must be True, False or a number of inputs to trace (>= 1), got {trace!r}")
            trace = DEFAULT_TRACE_SAMPLE if trace else 0
        self.graph = AppGraph.load(graph) if isinstance(graph, (str, Path)) else graph
        self._node_of_site = _nodes_by_site(self.graph)
        self.plan = Plan.load(plan) if isinstance(plan, (str, Path)) else plan
        if self.plan is not None and self.graph is None:
            raise ConfigError("offline(plan=...) needs the app graph the plan was made for: pass "
                              "offline(graph=..., plan=...) (samullm.trace's graph, scaled as for samullm.plan)")
        self.trace_sample = trace if self.graph is None and self.plan is None else 0
        self._given = (self.graph, self.trace_sample)  # what a re-entered block starts from again
        self.trace_seconds: float | None = None
        self._stand_in: Any = None  # a StandIn while the block traces
        self._recorder: Any = None
        self._progress: InputProgress | None = None
        self.pool: EnginePool | None = None
        self._pool_lock = threading.Lock()
        self.call_sites: Counter[str] = Counter()
        self._sites_lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._tokens: list[ActiveTokens] = []
        self.is_open = False
        self._final_report: RunReport | None = None
        self._closed = False  # closed (or closing): no pool may start any more
        self._interrupt_handler: tuple[Any, Any] | None = None  # (ours, the one it replaced)

    # ---- the block -----------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.open(process_wide=True)
        self._tokens.append(self.activate())
        return self

    def open(self, *, process_wide: bool, engines: bool = True) -> None:
        """Install the hooks (once per process) and, when every model is known, start the pool now: unknown
        weights or a missing profile fail here, before anything runs. ``process_wide``: threads started outside
        the block's context are served too (an ``offline()`` block; a ``wrap()``-ed chain serves its own calls).
        ``engines=False``: a block for tracing only, which neither checks weights nor starts a pool."""
        from samullm_lc.langchain import intercept

        if self.is_open:
            raise ConfigError("this offline() block is already open; nest a new samullm.offline(...) instead of "
                              "entering the same one twice")
        intercept.install()
        sites.register()
        self._closed = False
        self.graph, self.trace_sample = self._given  # entered again, a block traces its next batch afresh
        self._node_of_site, self._progress = _nodes_by_site(self.graph), None
        if engines and self._journal_path is not None:  # checked and held from now on, for the pool to come
            self._pool_options["journal"] = Journal(self._journal_path)
        try:
            if self.names is not None and engines and not self.trace_sample:
                self._serve_models(sorted(set(self.names.values())))
            elif self.names is not None and engines:  # the pool starts after the first batch's trace: check now
                check_models(sorted(set(self.names.values())), self.cluster, self.backend)
        except BaseException:
            if self._pool_options["journal"] is not None:
                self._pool_options["journal"].close()
                self._pool_options["journal"] = None
            raise
        self.is_open = True
        if process_wide:
            with _open_lock:
                _open_sessions.append(self)
            self._interrupt_handler = on_interrupt(self)

    def activate(self) -> ActiveTokens:
        """Make this the session of the current context (and the contexts it starts); ``deactivate`` undoes it."""
        return _current.set(self), concurrency_token(self.max_concurrency), sites.activate(self._input_done)

    @staticmethod
    def deactivate(tokens: ActiveTokens) -> None:
        from langchain_core.runnables.config import var_child_runnable_config

        token, config_token, sites_token = tokens
        sites.deactivate(sites_token)
        _reset(_current, token)
        if config_token is not None:
            _reset(var_child_runnable_config, config_token)

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(cancel=exc_type is not None)  # leaving by an error: fail what is in flight, stop at once

    def close(self, *, cancel: bool = False) -> None:
        """Finish (or, with ``cancel``, fail) what is outstanding and stop every engine."""
        with self._pool_lock:  # a thread starting the pool finishes first, so its engines are stopped too
            if not self.is_open:
                return
            self.is_open = False
            self._closed = True  # and no thread starts another
        with _open_lock:
            if self in _open_sessions:
                _open_sessions.remove(self)
        if self._interrupt_handler is not None:
            restore_interrupt(*self._interrupt_handler)
            self._interrupt_handler = None
        if self._tokens:
            self.deactivate(self._tokens.pop())
        if self.pool is not None:
            pool, self.pool = self.pool, None
            try:
                pool.close(cancel=cancel)
            finally:
                self._final_report = pool.report()
        elif isinstance(self._pool_options["journal"], Journal):  # opened for a pool that never started
            self._pool_options["journal"].close()
        self._pool_options["journal"] = None

    # ---- serving -------------------------------------------------------------------------------------
    def pool_model(self, name: str) -> str:
        """The pool's model for the name a client uses; ``UnknownClientModelError`` naming the fix if none."""
        if self.names is not None:
            if self.pool is None and self.trace_sample and self._stand_in is None:
                self.trace_sample = 0  # a call before any batch: serve from now on, planning as calls arrive
                self._serve_models(sorted(set(self.names.values())))
            if name not in self.names:
                raise UnknownClientModelError(
                    f"a LangChain client asks for model {name!r}, which this offline() block does not serve "
                    f"(it serves {sorted(self.names)}): add it, e.g. offline(models={{..., {name!r}: "
                    f"'<Hugging Face id or model folder>'}})")
            return self.names[name]
        if self.pool is None or name not in self.pool.models:
            self._add_model(name)
        return name

    def submit_openai(self, route: str, body: dict[str, Any]) -> Future[GenerationResult]:
        """Hand the pool one OpenAI call (the body a client sent a vLLM server); the future holds its result."""
        if not self.is_open:
            raise SamullmError(BLOCK_ENDED)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise ConfigError("the request names no model: set `model=` on the LangChain client")
        if self.tool_parser is None and asks_for_tool_calls(body):
            raise ConfigError(
                "the request offers tools for the model to call; vLLM's server parses tool calls with a parser for "
                "the model's format, and this offline() block has none: pass offline(tool_parser=NAME) with vLLM's "
                "parser for your model (e.g. 'hermes' for Qwen2.5, 'llama3_json' for Llama 3.1), or remove the "
                "tools (with_structured_output(method='json_schema') needs none)")
        if self._stand_in is not None:
            return self._answer_traced(route, name, body)
        model = self.pool_model(name)
        place = sites.current_call()
        site = sites.site_key(name, place.steps if place is not None else "")
        self._count(site)
        pool = self.pool
        if pool is None:
            raise SamullmError(BLOCK_ENDED)
        call = {"route": route, "body": body, "tool_parser": self.tool_parser}
        node = self._node_of_site.get(site)
        future = pool.submit(model, openai=call, node=node)
        progress = self._progress
        if progress is not None and node is not None and place is not None:
            progress.call(place.input, node)
        return future

    def _input_done(self, root: Any) -> None:
        progress = self._progress
        if progress is not None:
            progress.input_done(root)

    # ---- tracing ---------------------------------------------------------------------------------------
    def begin_tracing(self) -> Any:
        """From now on the stand-in answers the block's calls and the tracer records them; returns the recorder."""
        from samullm_lc.langchain.stand_in import StandIn
        from samullm_lc.langchain.tracing import TraceRecorder

        lengths = {m: p.output_lengths for m, p in self._profiles.items()
                   if getattr(p, "output_lengths", None) is not None}
        self._recorder = TraceRecorder()
        self._stand_in = StandIn(seed=self._pool_options["seed"], lengths=lengths)
        return self._recorder

    def end_tracing(self) -> None:
        self._stand_in = None

    def _answer_traced(self, route: str, name: str, body: dict[str, Any]) -> Future[GenerationResult]:
        if self.names is not None and name not in self.names:
            self.pool_model(name)  # raises, naming the fix
        model = self.names[name] if self.names is not None else name
        future: Future[GenerationResult] = Future()
        future.set_result(self._recorder.answer(self._stand_in, route, name, model, body))
        return future

    def wants_trace(self) -> bool:
        """Whether the next top-level batch should be traced first (nothing planned or running yet)."""
        return bool(self.trace_sample) and self.pool is None and self._stand_in is None and self.is_open

    def prepare(self, chain: Any, inputs: list[Any], config: Any = None) -> bool:
        """Before ``chain``'s first batch in the block: trace a sample of the inputs, scale the graph to the batch,
        and start the pool on it (its first stage's engines load while the real calls are being made). Whether it
        did (another thread's batch may have been first)."""
        from samullm_lc.langchain.tracing import trace_sample

        with self._prepare_lock:
            if not self.wants_trace() or not inputs:
                return False
            self.graph, self.trace_seconds = trace_sample(self, chain, inputs, config, self.trace_sample)
            self._node_of_site = _nodes_by_site(self.graph)
            self.trace_sample = 0
        self._serve_models(sorted({*self.graph.models(), *(self.names or {}).values()}))
        return True

    def finish_intake(self) -> None:
        """The traced batch has returned: the graph's calls that did not come will not (the trace over-counted
        them), so the pool plans without them; later calls are planned as they arrive."""
        pool = self.pool
        if pool is not None:
            pool.finish_intake()

    def _count(self, site: str) -> None:
        with self._sites_lock:
            self.call_sites[site] += 1

    def report(self) -> RunReport:
        """Plan vs actual for the block's pool (final once the block is left), with calls per call site."""
        report = self.pool.report() if self.pool is not None else self._final_report or RunReport(
            backend=self.backend, cluster=str(self.cluster), planner=self._pool_options["planner"])
        with self._sites_lock:
            report.call_sites = dict(self.call_sites)
        return report

    # ---- the pool ------------------------------------------------------------------------------------
    def _serve_models(self, models: list[str]) -> EnginePool:
        """The block's pool, started for ``models`` or, if running, serving them from now on (any thread)."""
        with self._pool_lock:
            if self._closed:
                raise SamullmError(BLOCK_ENDED)
            missing = [m for m in models if self.pool is None or m not in self.pool.models]
            profiles = self._measured_profiles(missing)
            if self.pool is None and self.graph is not None:  # the nodes expect what the inputs' progress allows
                self._progress = InputProgress(self.graph, lambda counts: self.pool and self.pool.expect(counts))
            if self.pool is None:
                plan = {"plan": self.plan} if self.plan is not None else {}
                pool = EnginePool(self.graph, self.cluster, models=models, profiles={**self._profiles, **profiles},
                                  engine_log=self._engine_log(), **plan, **self._pool_options)
                self.pool = pool.start()
            else:
                for model in missing:
                    self.pool.add_model(model, profiles.get(model))
            return self.pool

    def _add_model(self, name: str) -> None:
        """Serve a client's model by its own name (no ``models=`` given): a tiny model, a folder, a cached id."""
        try:
            self._serve_models([name])
        except SamullmError as exc:
            raise UnknownClientModelError(
                f"a LangChain client asks for model {name!r}, which cannot be served here ({exc}); map the name "
                f"to the weights: offline(models={{{name!r}: '<Hugging Face id or model folder>'}})") from None

    def _measured_profiles(self, models: list[str]) -> dict[str, Any]:
        """On the CPU engine the planner needs each model's measured speed: measured once, then cached."""
        from samullm_lc.profiling.pool_profiles import profiles_for

        return profiles_for(self.cluster, [m for m in models if m not in self._profiles], backend=self.backend,
                            engine_log=self._engine_log())

    def _engine_log(self) -> EngineLog:
        """The block's engine log, opened (its path printed) at its first engine or profile."""
        if self._log is None:
            engine_log, verbose = self._log_option
            self._log = TERMINAL if self.backend == "sim" else EngineLog.open(engine_log, verbose=verbose)
        return self._log


def _nodes_by_site(graph: AppGraph | None) -> dict[str, str]:
    """The app-graph node each traced call site's calls belong to."""
    return {node.site: node.name for node in graph.nodes if node.site} if graph is not None else {}


offline = OfflineSession
"""``samullm.offline(...)``: open a block (``with samullm.offline(models=...):``); see ``OfflineSession``."""


def _reset(var: contextvars.ContextVar, token: contextvars.Token) -> None:
    """Reset a ContextVar set on entry; a block left from another context (a generator, a thread) leaves it."""
    try:
        var.reset(token)
    except ValueError:
        pass
