"""The pool's driver: one thread that runs the plan, keeps engines fed, and re-plans as batches finish.

It always runs the first stage of the latest plan. Engines of that stage whose placement is unchanged keep
running; the others stop (their unfinished requests go back to the front of their model's queue) and the
new ones start as their devices free up. It re-plans, with the planner's ``replan`` on what it observed
(finished requests, refined output-length distributions, measured load times), when

- a model finishes its share of the app (the plan's stage boundary),
- work arrives for a model the stage does not run (requests beyond the app graph),
- the stage runs longer than planned by more than ``replan_threshold``,
- an engine fails (it is restarted, or the model is re-planned elsewhere).

Requests wait in per-model queues; each engine holds at most ``max_in_flight`` of them, so a re-plan can
move the rest. Every request resolves its future exactly once: a result, or a ``RequestError``. A request
that cannot be taken in fails alone; if planning fails, every outstanding request fails with the reason
(recorded in the report's ``errors``); if the driver itself fails, every future, queued or not yet taken,
fails with the cause. A long-running pool keeps nothing per finished request beyond the app graph's own
bookkeeping: requests beyond the graph are kept only while unfinished, observed output lengths as a bounded
uniform sample.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field

import numpy as np

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.errors import ConfigError, JournalError, PoolError, RequestError, SamullmError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.planner import check_planner, plan_app, replan
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.plan import ExecutionPlan, Plan, Stage, StageEntry
from samullm_lc.planner.state import RunState
from samullm_lc.runtime.backends.base import Backend, EngineReady, EngineSpec, EngineStopped, Event, RequestDone
from samullm_lc.runtime.journal import Journal
from samullm_lc.runtime.report import EngineSpan, ModelRecord, ReplanRecord, RunReport, estimated_finish_seconds
from samullm_lc.runtime.requests import GenerationResult, Request, content_key

EXTRA_SUFFIX = "#extra"
OBSERVED_LENGTHS_KEPT = 20_000
"""Observed output lengths kept per model (a uniform sample): plenty to refine a distribution, bounded."""
logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Engine:
    spec: EngineSpec
    plan: ExecutionPlan
    started_at: float
    ready_at: float | None = None
    stopping: bool = False
    in_flight: int = 0
    requests_done: int = 0


@dataclass(slots=True)
class _NodeProgress:
    """Requests of one app-graph node: how many were submitted, which finished, their output lengths."""

    expected: int
    assigned: int = 0
    finished: list[int] = field(default_factory=list)
    output_tokens: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class _ExtraNode:
    """Requests for one model beyond the app graph. Only the unfinished ones are kept: the planner plans
    what is left, and a pool serving a stream must not grow with every request it ever served."""

    model: str
    pending: dict[int, int] = field(default_factory=dict)  # request index -> prompt tokens (estimate)
    next_index: int = 0
    max_tokens: int = 0


@dataclass(slots=True)
class _ObservedLengths:
    """A uniform sample (reservoir) of one model's observed output lengths and whether ``max_tokens`` cut
    them, at most ``OBSERVED_LENGTHS_KEPT``."""

    tokens: list[int] = field(default_factory=list)
    cut: list[bool] = field(default_factory=list)
    seen: int = 0

    def add(self, tokens: int, cut: bool, rng: np.random.Generator) -> None:
        self.seen += 1
        if len(self.tokens) < OBSERVED_LENGTHS_KEPT:
            self.tokens.append(tokens)
            self.cut.append(cut)
            return
        slot = int(rng.integers(self.seen))
        if slot < OBSERVED_LENGTHS_KEPT:
            self.tokens[slot], self.cut[slot] = tokens, cut


@dataclass(slots=True)
class _ModelCounters:
    """A model's running counts (the report's ModelRecord, kept as a plain dataclass in the hot path)."""

    model: str
    requests_expected: int = 0
    requests_submitted: int = 0
    requests_done: int = 0
    requests_failed: int = 0
    from_journal: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    first_finish_seconds: float | None = None
    last_finish_seconds: float | None = None
    estimated_finish_seconds: float | None = None


@dataclass(slots=True)
class DriverSettings:
    """Knobs of the driver loop; checked when made (a value that would hang the pool is a ``ConfigError``)."""

    planner: str = "search"
    replan_threshold: float = 0.25
    max_in_flight: int = 512
    max_attempts: int = 3
    max_engine_failures: int = 3
    poll_seconds: float = 0.2
    min_replan_seconds: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_planner(self.planner)
        for name in ("max_in_flight", "max_attempts", "max_engine_failures"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
        for name in ("replan_threshold", "poll_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < np.inf:
                raise ConfigError(f"{name} must be a positive number of seconds or a fraction, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"seed must be a whole number of at least 0 (numpy's generators take no negative "
                              f"seeds), got {self.seed!r}")


class Driver:
    """Owns the queues, the engines and the plan; runs in the pool's driver thread."""

    def __init__(self, app: AppGraph | None, cluster: Cluster, backend: Backend, *, models: list[str],
                 profiles: dict[str, EngineProfile], journal: Journal | None, settings: DriverSettings,
                 on_progress: Callable[[RunReport], None] | None = None) -> None:
        self.base_app = app
        self.cluster = cluster
        self.backend = backend
        self.models = models
        self.profiles = profiles
        self.journal = journal
        self.settings = settings
        self.on_progress = on_progress
        self.inbox: deque[tuple[Request, Future]] = deque()
        self._intake_lock = threading.Lock()
        self._intake_closed: str | None = None  # why the driver takes no more requests (None: it takes them)
        self.closing = threading.Event()
        self.cancelling = threading.Event()  # close without waiting: fail what is outstanding
        self.idle = threading.Condition()
        self._rng = np.random.default_rng(settings.seed)
        self._queues: dict[str, deque[int]] = {m: deque() for m in models}
        self._requests: dict[int, Request] = {}
        self._futures: dict[int, Future] = {}
        self._occurrences: Counter[str] = Counter()
        self._engines: dict[int, _Engine] = {}
        self._next_engine_id = 0
        self._waiting_starts: list[tuple[EngineSpec, ExecutionPlan]] = []
        self._preloading: set[tuple[str, tuple[int, ...]]] = set()  # (model, devices): loads now, serves next stage
        self._nodes: dict[str, _NodeProgress] = {}
        self._extras: dict[str, _ExtraNode] = {}  # node name -> requests beyond the app graph
        self._plan: Plan | None = None
        self._stage_started = 0.0
        self._stage_estimate = np.inf
        self._observed: dict[str, _ObservedLengths] = defaultdict(_ObservedLengths)
        self._loads: dict[str, dict[int, float]] = defaultdict(dict)
        self._engine_failures: Counter[str] = Counter()
        self._given_up: dict[str, str] = {}  # model -> why its requests are abandoned
        self._pending_journal: list[tuple[str, GenerationResult]] = []
        self._needs_replan: str | None = None
        self._seen_by_plan: set[str] = set()  # models with queued requests when the last plan was made: a plan
        # that left one without an engine chose to, so more of its requests arriving do not re-plan again
        self._last_progress = 0.0
        self.report = RunReport(backend=backend.name, cluster=str(cluster), planner=settings.planner)
        self._model_records = {m: _ModelCounters(model=m) for m in models}
        self._nodes_of: dict[str, list[str]] = defaultdict(list)
        self._remaining: Counter[str] = Counter()  # per model: app requests not finished yet
        self._outstanding: Counter[str] = Counter()  # per model: requests queued or on an engine
        if app is not None:
            for node in app.nodes:
                self._nodes[node.name] = _NodeProgress(expected=node.num_requests)
                self._model_records[node.model].requests_expected += node.num_requests
                self._remaining[node.model] += node.num_requests
                self._nodes_of[node.model].append(node.name)
            self._needs_replan = "start"  # the graph says what is coming: start loading engines now

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """The driver thread's body: until closed and idle."""
        stop_reason = "the pool was closed; submit requests before close()"
        try:
            while True:
                self._take_inbox()
                if self.cancelling.is_set() and self._futures:
                    self.report.interrupted = True
                    self._fail_all("the run was interrupted before this request finished")
                if self.closing.is_set() and self.is_idle():
                    break
                if self._needs_replan:
                    self._replan(self._needs_replan)
                self._start_waiting_engines()
                self._dispatch()
                busy = any(e.in_flight for e in self._engines.values()) or self.inbox
                for event in self.backend.wait(0.0 if self.inbox else self.settings.poll_seconds if busy else 0.5):
                    self._handle(event)
                self._flush_journal()
                self._check_schedule()
                self._notify()
        except BaseException as exc:  # the driver must never leave futures hanging
            stop_reason = f"the engine pool's driver failed: {type(exc).__name__}: {exc}"
            self._fail_all(stop_reason)
            raise
        finally:
            self._close_intake(stop_reason)
            try:
                self._flush_journal()
                self._close_stage_record(self.snapshot().seconds)
                self._shutdown_engines()
            finally:
                self._notify(force=True)

    def _notify(self, force: bool = False) -> None:
        with self.idle:
            self.idle.notify_all()
        now = time.monotonic()
        if self.on_progress is not None and (force or now - self._last_progress > 0.5):
            self._last_progress = now
            self.on_progress(self.snapshot())

    def is_idle(self) -> bool:
        """Every submitted request has resolved."""
        return not self._futures and not self.inbox

    def has_node(self, name: str) -> bool:
        """Whether the app graph has a node of this name."""
        return name in self._nodes

    # ---- requests in ---------------------------------------------------------------------------------
    def offer(self, request: Request, future: Future) -> str | None:
        """Hand a request to the driver (any thread); returns why it was not taken, or None if it was."""
        with self._intake_lock:
            if self._intake_closed is not None:
                return self._intake_closed
            self.inbox.append((request, future))
            return None

    def _close_intake(self, reason: str) -> None:
        """Take no more requests; the ones offered but not taken in fail with ``reason``."""
        with self._intake_lock:
            self._intake_closed = reason
            left, self.inbox = list(self.inbox), deque()
        for request, future in left:
            record = self._model_records[request.model]
            record.requests_submitted += 1
            record.requests_failed += 1
            if not future.done():
                future.set_exception(RequestError(f"request {request.id} to {request.model}: {reason}"))

    def _take_inbox(self) -> None:
        """Register new requests, each on its own: one that cannot be taken in fails alone."""
        while self.inbox:
            request, future = self.inbox.popleft()
            try:
                self._register(request, future)
            except PoolError as exc:
                self._reject(request, future, f"request {request.id} to {request.model}: {exc}")
            except Exception as exc:  # a bad request must not stop the driver, nor the requests behind it
                logger.exception("request %s to %s could not be taken in", request.id, request.model)
                self._reject(request, future, f"request {request.id} to {request.model} could not be taken in: "
                                              f"{type(exc).__name__}: {exc}")
        if self._plan is None and self._requests and self._needs_replan is None:
            self._needs_replan = "start"

    def _register(self, request: Request, future: Future) -> None:
        """Journal hits resolve at once; the rest join their model's queue. Everything that can fail (the
        journal's key and lookup) happens before any bookkeeping changes."""
        if request.model in self._given_up:
            raise PoolError(self._given_up[request.model])
        if not future.set_running_or_notify_cancel():
            return  # the caller cancelled it before it was taken in: nothing to run, nobody waiting
        if request.model not in self._queues:  # a model the pool took on after it started (``add_model``)
            self._queues[request.model] = deque()
            self._model_records[request.model] = _ModelCounters(model=request.model)
        known = self._journalled(request)
        record = self._model_records[request.model]
        request.submitted_at = self.backend.now()
        self._assign_node(request)
        record.requests_submitted += 1
        if known is not None:
            record.from_journal += 1
            self._complete(request, future, known, from_engine=False)
            return
        self._requests[request.id] = request
        self._futures[request.id] = future
        self._outstanding[request.model] += 1
        self._queues[request.model].append(request.id)
        beyond_app = request.node in self._extras
        unserved = not self._engines_of(request.model) and not any(
            spec.model == request.model for spec, _ in self._waiting_starts)
        if beyond_app and self._plan is not None and unserved and request.model not in self._seen_by_plan:
            self._needs_replan = self._needs_replan or (
                f"requests beyond the app graph arrived for {request.model}, which no engine runs")

    def _reject(self, request: Request, future: Future, message: str) -> None:
        """Fail a request that was never registered."""
        if request.id in self._futures:
            self._fail(request, self._futures[request.id], message)
            return
        record = self._model_records[request.model]
        record.requests_submitted += 1
        record.requests_failed += 1
        if not future.done():
            future.set_exception(RequestError(message))

    def _journalled(self, request: Request) -> GenerationResult | None:
        """Give the request its journal key and return its recorded result, if any. A recorded result that
        cannot be read is recomputed, and the report says so."""
        if self.journal is None:
            return None
        base = content_key(request.model, request.kind, request.prompt, request.sampling)
        request.key = f"{base}:{self._occurrences[base]}"
        self._occurrences[base] += 1
        try:
            return self.journal.get(request.key)
        except JournalError as exc:
            self.report.journal_recomputed += 1
            if self.report.journal_recomputed == 1:  # the first names the cause; the count says how many
                self._add_error(f"{exc}; such requests are recomputed (the report's journal_recomputed counts them)")
            return None

    def _assign_node(self, request: Request) -> None:
        """Give the request the next free slot of its node (or of its model's first unfilled node); past the
        app graph, a slot of its model's extra node."""
        for name in [request.node] if request.node else self._nodes_of[request.model]:
            progress = self._nodes.get(name)
            if progress is not None and progress.assigned < progress.expected:
                request.node = name
                request.index = progress.assigned
                progress.assigned += 1
                return
        name = request.model + EXTRA_SUFFIX
        extra = self._extras.setdefault(name, _ExtraNode(model=request.model))
        request.node, request.index = name, extra.next_index
        extra.next_index += 1
        extra.pending[request.index] = request.prompt_length_hint()
        extra.max_tokens = max(extra.max_tokens, request.sampling.max_tokens)
        self._model_records[request.model].requests_expected += 1
        self._remaining[request.model] += 1

    # ---- results out ---------------------------------------------------------------------------------
    def _handle(self, event: Event) -> None:
        if isinstance(event, RequestDone):
            engine = self._engines.get(event.engine_id)
            if engine is not None:
                engine.in_flight -= 1
                engine.requests_done += 1
            request = self._requests.get(event.request_id)
            if request is None:
                return  # already resolved (a re-run after a restart): exactly once
            future = self._futures[event.request_id]
            if event.error is not None:
                self._fail(request, future, f"request {request.id} to {request.model} failed: {event.error}")
            else:
                self._complete(request, future, event.result, from_engine=True)
        elif isinstance(event, EngineReady):
            engine = self._engines.get(event.engine_id)
            if engine is not None:
                engine.ready_at = self.backend.now()
                self._loads[engine.spec.model][engine.spec.tp] = self._model_load(engine.spec.model, event)
        elif isinstance(event, EngineStopped):
            self._engine_gone(event)

    def _model_load(self, model: str, event: EngineReady) -> float:
        """The observed start without the process start-up, which re-planned engines do not pay (they start in
        stopped engines' processes): a fresh process's start less the profile's process start."""
        profile = self.profiles.get(model)
        extra = profile.process_start_seconds if event.fresh_process and profile is not None else None
        return max(0.0, event.load_seconds - (extra or 0.0))

    def _resolved(self, request: Request) -> None:
        if self._requests.pop(request.id, None) is not None:
            self._outstanding[request.model] -= 1
        self._futures.pop(request.id, None)

    def _complete(self, request: Request, future: Future, result: GenerationResult, *, from_engine: bool) -> None:
        self._resolved(request)
        record = self._model_records[request.model]
        record.requests_done += 1
        record.prompt_tokens += result.prompt_tokens
        record.output_tokens += result.output_tokens
        now = self.backend.now()
        record.first_finish_seconds = min(record.first_finish_seconds or now, now)
        record.last_finish_seconds = now
        if from_engine:
            observed = self._observed[request.model]
            for completion in result.completions:
                observed.add(completion.num_tokens, completion.finish_reason == "length", self._rng)
            if self.journal is not None:
                self._pending_journal.append((request.key, result))
        self._node_done(request, result.completions[0].num_tokens if result.completions else 0)
        if not future.done():
            future.set_result(result)

    def _fail(self, request: Request, future: Future, message: str, *, replan: bool = True) -> None:
        self._resolved(request)
        self._model_records[request.model].requests_failed += 1
        self._node_done(request, 0, replan=replan)
        if not future.done():
            future.set_exception(RequestError(message))

    def _node_done(self, request: Request, output_tokens: int, *, replan: bool = True) -> None:
        extra = self._extras.get(request.node)
        if extra is not None:
            extra.pending.pop(request.index, None)
        else:
            progress = self._nodes[request.node]
            progress.finished.append(request.index)
            progress.output_tokens[request.index] = max(1, output_tokens)
        self._remaining[request.model] -= 1
        done = self._remaining[request.model] <= 0 and self._outstanding[request.model] == 0
        if replan and done:
            self._needs_replan = self._needs_replan or f"{request.model} finished"

    def _flush_journal(self) -> None:
        """Write finished results to the journal. If it cannot be written (a full disk), the run goes on
        without it and the report says from when results are not journalled."""
        if self.journal is None or not self._pending_journal:
            return
        try:
            self.journal.put_many(self._pending_journal)
        except JournalError as exc:
            self._add_error(f"{exc}; results from {self.backend.now():.1f} s on are not journalled, so a resumed "
                            "run recomputes them")
            self.journal = None
        self._pending_journal = []

    def _add_error(self, message: str) -> None:
        """Record a problem of the run as a whole (once), and log it."""
        if message not in self.report.errors:
            logger.error("%s", message)
            self.report.errors.append(message)

    def _fail_all(self, message: str) -> None:
        """Fail every outstanding request with ``message`` (planning failed, or the driver itself did)."""
        self._add_error(message)
        for queue in self._queues.values():
            queue.clear()
        for request_id, future in list(self._futures.items()):
            request = self._requests.get(request_id)
            try:
                self._fail(request, future, message, replan=False)
            except Exception:  # the bookkeeping itself is broken (the driver failed): still resolve the future
                self._futures.pop(request_id, None)
                if not future.done():
                    future.set_exception(RequestError(message))

    # ---- engines -------------------------------------------------------------------------------------
    def _engines_of(self, model: str) -> list[_Engine]:
        return [e for e in self._engines.values() if e.spec.model == model and not e.stopping]

    def _dispatch(self) -> None:
        """Top every ready engine up from its model's queue, least loaded replica first.

        An engine holds at most ``max_in_flight`` requests and at most its share of the model's outstanding
        ones (queued and in flight, over the replicas up or loading): the replica ready first must not take
        everything, as the plan counts on each replica doing its part.
        """
        for model, queue in self._queues.items():
            if not queue:
                continue
            replicas = [e for e in self._engines_of(model) if (model, e.spec.devices) not in self._preloading]
            engines = [e for e in replicas if e.ready_at is not None]
            if not engines:
                continue
            outstanding = len(queue) + sum(e.in_flight for e in replicas)
            limit = min(self.settings.max_in_flight, -(-outstanding // len(replicas)))
            while queue:
                engine = min(engines, key=lambda e: e.in_flight)
                room = limit - engine.in_flight
                if room <= 0:
                    break
                batch = [self._requests[queue.popleft()] for _ in range(min(room, len(queue)))]
                for request in batch:
                    request.attempts += 1
                engine.in_flight += len(batch)
                self.backend.submit(engine.spec.engine_id, batch)

    def _engine_gone(self, event: EngineStopped) -> None:
        """An engine stopped: its unfinished requests go back to the front of the queue. If it failed, a request
        that was on ``max_attempts`` failed engines fails, and the model is re-planned or given up."""
        engine = self._engines.pop(event.engine_id, None)
        if engine is None:
            return
        model = engine.spec.model
        self._record_engine_end(engine)
        requeue = [rid for rid in event.unfinished if rid in self._requests]
        if event.failure is not None:
            self._engine_failures[model] += 1
            self.report.engine_failures.append(f"{self.backend.now():.1f} s: {event.failure}")
            for rid in requeue:
                request = self._requests[rid]
                if request.attempts >= self.settings.max_attempts:
                    self._fail(request, self._futures[rid],
                               f"request {rid} to {model} was on {request.attempts} engines that failed; "
                               f"last failure: {event.failure}")
            requeue = [rid for rid in requeue if rid in self._requests]
        if model in self._given_up:  # a replica of a given-up model stopped: its requests cannot run anywhere
            for rid in requeue:
                self._fail(self._requests[rid], self._futures[rid], self._given_up[model])
            return
        self._queues[model].extendleft(reversed(requeue))
        if event.failure is None:
            return
        if event.permanent or self._engine_failures[model] >= self.settings.max_engine_failures:
            self._give_up(model, event.failure)  # fails the queue, re-queued requests included
        else:
            self._needs_replan = self._needs_replan or f"engine {event.engine_id} ({model}) failed: {event.failure}"

    def _give_up(self, model: str, failure: str) -> None:
        """A model whose engines keep failing: its requests, queued or still to come, fail with the cause; the
        rest of the run goes on."""
        message = (f"model {model}: its engine failed {self._engine_failures[model]} time(s) "
                   f"(last: {failure}); its requests are abandoned")
        self._given_up[model] = message
        self._remaining[model] = 0  # nothing more is expected of it (the planner leaves its nodes out)
        self._add_error(message)
        queue = self._queues[model]
        while queue:
            rid = queue.popleft()
            self._fail(self._requests[rid], self._futures[rid], message)
        self._needs_replan = self._needs_replan or message

    def _start_waiting_engines(self) -> None:
        """Start the stage's engines whose devices have room now: the memory shares of the engines on each
        device (running or still stopping) and the new one's add up to at most one, so engines planned to
        share a GPU start together and others wait for the engines they replace to stop."""
        used: defaultdict[int, float] = defaultdict(float)
        for engine in self._engines.values():
            for device in engine.spec.devices:
                used[device] += engine.spec.memory_fraction
        still = []
        for spec, plan in self._waiting_starts:
            if spec.model in self._given_up:
                continue
            if any(used[d] + spec.memory_fraction > 1.0 + 1e-9 for d in spec.devices):
                still.append((spec, plan))
                continue
            self._engines[spec.engine_id] = _Engine(spec=spec, plan=plan, started_at=self.backend.now())
            for device in spec.devices:
                used[device] += spec.memory_fraction
            self.backend.start_engine(spec)
        self._waiting_starts = still

    def _record_engine_end(self, engine: _Engine) -> None:
        spec = engine.spec
        self.report.engines.append(EngineSpan(
            model=spec.model, devices=list(spec.devices), tp=spec.tp, memory_fraction=spec.memory_fraction,
            started_seconds=engine.started_at, ready_seconds=engine.ready_at, stopped_seconds=self.backend.now(),
            requests_done=engine.requests_done,
        ))

    def _shutdown_engines(self) -> None:
        for engine in list(self._engines.values()):
            self._record_engine_end(engine)
        self._engines.clear()
        self.backend.close()

    # ---- the plan ------------------------------------------------------------------------------------
    def current_app(self) -> AppGraph | None:
        """What the planner plans: the app graph plus, per model, a node of the unfinished requests beyond it;
        None if there is neither. Nodes of given-up models, and the nodes that read them, are left out: their
        requests fail or never come."""
        nodes = list(self.base_app.nodes) if self.base_app is not None else []
        if self._given_up and self.base_app is not None:
            dropped: set[str] = set()
            for name in self.base_app.topological_order:  # upstream first, so a drop reaches every reader
                node = self.base_app.node(name)
                if node.model in self._given_up or dropped.intersection(node.depends_on):
                    dropped.add(name)
            nodes = [n for n in nodes if n.name not in dropped]
        for name, extra in self._extras.items():
            if extra.pending and extra.model not in self._given_up:
                nodes.append(LLMNode(name=name, model=extra.model, input_tokens=list(extra.pending.values()),
                                     max_tokens=extra.max_tokens))
        if not nodes:
            return None
        return AppGraph(name=self.base_app.name if self.base_app else "pool", nodes=nodes)

    def _run_state(self, app: AppGraph) -> RunState:
        planned = {node.name for node in app.nodes}
        finished = {name: sorted(p.finished) for name, p in self._nodes.items() if p.finished and name in planned}
        outputs = {name: dict(p.output_tokens) for name, p in self._nodes.items()
                   if p.output_tokens and name in planned}
        engines: dict[str, ExecutionPlan | None] = {}
        for model in app.models():
            running = self._engines_of(model)  # loading ones count as up: restarting them elsewhere loses more
            whole = bool(running) and all(e.plan == running[0].plan for e in running) \
                and len(running) == running[0].plan.replicas  # every replica of one plan is up
            engines[model] = running[0].plan if whole else None
        lengths = {}
        for model, observed in self._observed.items():
            if model in app.models() and observed.tokens:
                lengths[model] = self._base_lengths(model).refined(np.asarray(observed.tokens),
                                                                   censored=np.asarray(observed.cut))
        loads = {m: dict(v) for m, v in self._loads.items() if m in app.models()}
        return RunState(finished=finished, output_tokens=outputs, engines=engines, output_lengths=lengths,
                        load_seconds=loads, elapsed_seconds=self.backend.now())

    def _base_lengths(self, model: str) -> OutputLengthDistribution:
        profile = self.profiles.get(model)
        if profile is not None and profile.output_lengths is not None:
            return profile.output_lengths
        return OutputLengthDistribution.sharegpt()

    def _replan(self, reason: str) -> None:
        self._needs_replan = None
        self._seen_by_plan = {model for model, queue in self._queues.items() if queue}
        app = self.current_app()
        if app is None:
            return
        started = time.perf_counter()
        try:
            if self._plan is None:
                state = self._run_state(app)
                plan = replan(app, self.cluster, state, self.settings.planner, seed=self.settings.seed,
                              profiles=self.profiles) if state.finished else plan_app(
                    app, self.cluster, self.settings.planner, seed=self.settings.seed, profiles=self.profiles)
            else:
                plan = replan(app, self.cluster, self._run_state(app), self.settings.planner, seed=self.settings.seed,
                              profiles=self.profiles)
        except SamullmError as exc:
            self._fail_all(f"planning failed: {exc}")
            return
        planning = time.perf_counter() - started
        now = self.backend.now()
        if self.report.estimated_seconds is None:
            self.report.estimated_seconds = now + plan.estimated_seconds
            self.report.initial_plan = plan
            node_models = {n.name: n.model for n in app.nodes}
            for model, finish in estimated_finish_seconds(plan, node_models).items():
                self._model_records[model].estimated_finish_seconds = now + finish
        self._plan = plan
        stage = plan.stages[0] if plan.stages else None
        self._close_stage_record(now)
        self._stage_started = now
        self._stage_estimate = (stage.end_seconds - stage.start_seconds) if stage else np.inf
        self.report.replans.append(ReplanRecord(
            at_seconds=now, reason=reason, planning_seconds=planning,
            estimated_remaining_seconds=plan.estimated_seconds,
            stage=[entry.plan.short() + " for " + ", ".join(entry.nodes) for entry in stage.entries] if stage else [],
            planned_stage_seconds=None if stage is None else stage.end_seconds - stage.start_seconds,
        ))
        self._reconcile(stage)

    def _close_stage_record(self, now: float) -> None:
        """The stage that ran until now gets its actual length."""
        if self.report.replans and self.report.replans[-1].actual_stage_seconds is None:
            self.report.replans[-1].actual_stage_seconds = max(0.0, now - self.report.replans[-1].at_seconds)

    def _reconcile(self, stage: Stage | None) -> None:
        """Make the running engines match ``stage``: keep the unchanged ones, stop the rest, start the new.

        An entry without nodes is an engine loading for the next stage beside the running ones: it gets no
        requests until a stage lists its nodes.

        Engines are replicas: one whose model, devices, TP degree and memory share the stage keeps is kept even
        when its model's plan gains or loses replicas (they are independent engines), so growing a model
        onto freed devices does not restart the replicas it runs.
        """
        wanted: dict[tuple[str, tuple[int, ...]], tuple[ExecutionPlan, StageEntry]] = {}
        for entry in stage.entries if stage else []:
            plan = entry.plan
            for r in range(plan.replicas):
                devices = tuple(plan.gpus[r * plan.tp:(r + 1) * plan.tp])
                wanted[(plan.model, devices)] = (plan, entry)
        self._preloading = {key for key, (_, entry) in wanted.items() if not entry.nodes}
        for engine in self._engines.values():
            key = (engine.spec.model, engine.spec.devices)
            plan = wanted[key][0] if key in wanted else None
            if plan is not None and not engine.stopping and (plan.tp, plan.memory_fraction) == (
                    engine.plan.tp, engine.plan.memory_fraction):
                engine.plan = plan
                del wanted[key]
            elif not engine.stopping:
                engine.stopping = True
                self.backend.stop_engine(engine.spec.engine_id)
        self._waiting_starts = []
        for (model, devices), (plan, _) in wanted.items():
            spec = EngineSpec(engine_id=self._next_engine_id, model=model, devices=devices, tp=plan.tp,
                              memory_fraction=plan.memory_fraction)
            self._next_engine_id += 1
            self._waiting_starts.append((spec, plan))

    def _check_schedule(self) -> None:
        """Re-plan when the stage overruns its estimate by more than the threshold.

        At most every ``min_replan_seconds`` (and ten planning times), so a plan of short stages does not
        spend the run re-planning.
        """
        if self._plan is None or self._needs_replan or not np.isfinite(self._stage_estimate):
            return
        elapsed = self.backend.now() - self._stage_started
        last_planning = self.report.replans[-1].planning_seconds if self.report.replans else 0.0
        patience = max(self._stage_estimate, self.settings.min_replan_seconds, 10 * last_planning)
        if elapsed > (1 + self.settings.replan_threshold) * patience:
            self._needs_replan = (f"stage ran {elapsed:.1f} s against {self._stage_estimate:.1f} s planned "
                                  f"(more than {self.settings.replan_threshold:.0%} over)")
            self._stage_estimate = np.inf

    def snapshot(self) -> RunReport:
        """The report so far (models' progress, re-plans)."""
        self.report.models = [ModelRecord(**asdict(r)) for r in self._model_records.values()]
        self.report.seconds = max((r.last_finish_seconds or 0.0 for r in self._model_records.values()), default=0.0)
        self.report.elapsed_seconds = self.backend.now()
        return self.report.model_copy()

