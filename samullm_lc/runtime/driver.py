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
move the rest. Every request resolves its future exactly once: a result, or a ``RequestError``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field

import numpy as np

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.errors import SamullmError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.planner import plan_app, replan
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.plan import ExecutionPlan, Plan, Stage, StageEntry
from samullm_lc.planner.state import RunState
from samullm_lc.runtime.backends.base import Backend, EngineReady, EngineSpec, EngineStopped, Event, RequestDone
from samullm_lc.runtime.journal import Journal
from samullm_lc.runtime.report import EngineSpan, ModelRecord, ReplanRecord, RunReport, estimated_finish_seconds
from samullm_lc.runtime.requests import GenerationResult, Request, RequestError, content_key

EXTRA_SUFFIX = "#extra"


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
    """Knobs of the driver loop."""

    planner: str = "search"
    replan_threshold: float = 0.25
    max_in_flight: int = 512
    max_attempts: int = 3
    max_engine_failures: int = 3
    poll_seconds: float = 0.2
    min_replan_seconds: float = 2.0
    seed: int = 0


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
        self.closing = threading.Event()
        self.idle = threading.Condition()
        self._queues: dict[str, deque[int]] = {m: deque() for m in models}
        self._requests: dict[int, Request] = {}
        self._futures: dict[int, Future] = {}
        self._occurrences: Counter[str] = Counter()
        self._engines: dict[int, _Engine] = {}
        self._next_engine_id = 0
        self._waiting_starts: list[tuple[EngineSpec, ExecutionPlan]] = []
        self._preloading: set[tuple[str, tuple[int, ...]]] = set()  # (model, devices): loads now, serves next stage
        self._nodes: dict[str, _NodeProgress] = {}
        self._extra_inputs: dict[str, list[int]] = defaultdict(list)
        self._extra_max_tokens: dict[str, int] = defaultdict(int)
        self._app: AppGraph | None = None
        self._app_dirty = True
        self._plan: Plan | None = None
        self._stage_started = 0.0
        self._stage_estimate = np.inf
        self._observed: dict[str, list[tuple[int, bool]]] = defaultdict(list)
        self._loads: dict[str, dict[int, float]] = defaultdict(dict)
        self._engine_failures: Counter[str] = Counter()
        self._pending_journal: list[tuple[str, GenerationResult]] = []
        self._needs_replan: str | None = None
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
        try:
            while True:
                self._take_inbox()
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
            self._fail_everything(f"the engine pool's driver failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            self._flush_journal()
            self._close_stage_record(self.snapshot().seconds)
            self._shutdown_engines()
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
    def _take_inbox(self) -> None:
        """Register new requests: journal hits resolve at once, the rest join their model's queue."""
        while self.inbox:
            request, future = self.inbox.popleft()
            if self.journal is not None:
                base = content_key(request.model, request.kind, request.prompt, request.sampling)
                request.key = f"{base}:{self._occurrences[base]}"
                self._occurrences[base] += 1
            request.submitted_at = self.backend.now()
            self._assign_node(request)
            record = self._model_records[request.model]
            record.requests_submitted += 1
            known = self.journal.get(request.key) if self.journal is not None else None
            if known is not None:
                record.from_journal += 1
                self._complete(request, future, known, from_engine=False)
                continue
            self._requests[request.id] = request
            self._futures[request.id] = future
            self._outstanding[request.model] += 1
            self._queues[request.model].append(request.id)
            beyond_app = request.node.endswith(EXTRA_SUFFIX)
            unserved = not self._engines_of(request.model) and not any(
                spec.model == request.model for spec, _ in self._waiting_starts)
            if beyond_app and self._plan is not None and unserved:
                self._needs_replan = self._needs_replan or (
                    f"requests beyond the app graph arrived for {request.model}, which no engine runs")
        if self._plan is None and self._requests and self._needs_replan is None:
            self._needs_replan = "start"

    def _assign_node(self, request: Request) -> None:
        """Give the request the next free slot of its node (or of its model's first unfilled node)."""
        for name in [request.node] if request.node else self._nodes_of[request.model]:
            progress = self._nodes.get(name)
            if progress is not None and progress.assigned < progress.expected:
                request.node = name
                request.index = progress.assigned
                progress.assigned += 1
                return
        extra = request.model + EXTRA_SUFFIX
        inputs = self._extra_inputs[extra]
        request.node, request.index = extra, len(inputs)
        inputs.append(request.prompt_length_hint())
        self._extra_max_tokens[extra] = max(self._extra_max_tokens[extra], request.sampling.max_tokens)
        self._app_dirty = True
        progress = self._nodes.setdefault(extra, _NodeProgress(expected=0))
        progress.expected += 1
        progress.assigned += 1
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
            for completion in result.completions:
                cut = completion.finish_reason == "length"
                self._observed[request.model].append((completion.num_tokens, cut))
            if self.journal is not None:
                self._pending_journal.append((request.key, result))
        self._node_done(request, result.completions[0].num_tokens if result.completions else 0)
        if not future.done():
            future.set_result(result)

    def _fail(self, request: Request, future: Future, message: str) -> None:
        self._resolved(request)
        self._model_records[request.model].requests_failed += 1
        self._node_done(request, 0)
        if not future.done():
            future.set_exception(RequestError(message))

    def _node_done(self, request: Request, output_tokens: int) -> None:
        progress = self._nodes[request.node]
        progress.finished.append(request.index)
        progress.output_tokens[request.index] = max(1, output_tokens)
        self._remaining[request.model] -= 1
        if self._remaining[request.model] <= 0 and self._outstanding[request.model] == 0:
            self._needs_replan = self._needs_replan or f"{request.model} finished"

    def _flush_journal(self) -> None:
        if self.journal is not None and self._pending_journal:
            self.journal.put_many(self._pending_journal)
            self._pending_journal = []

    def _fail_everything(self, message: str) -> None:
        for request_id, future in list(self._futures.items()):
            if not future.done():
                future.set_exception(RequestError(message))
        self._futures.clear()
        self._requests.clear()

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
        engine = self._engines.pop(event.engine_id, None)
        if engine is None:
            return
        model = engine.spec.model
        requeue = [rid for rid in event.unfinished if rid in self._requests]
        if event.failure is not None:
            self._engine_failures[model] += 1
            self.report.engine_failures.append(f"{self.backend.now():.1f} s: {event.failure}")
            self._record_engine_end(engine)
            for rid in requeue:
                request = self._requests[rid]
                if request.attempts >= self.settings.max_attempts:
                    self._fail(request, self._futures[rid],
                               f"request {rid} to {model} was on {request.attempts} engines that failed; "
                               f"last failure: {event.failure}")
            requeue = [rid for rid in requeue if rid in self._requests]
            if self._engine_failures[model] >= self.settings.max_engine_failures:
                self._give_up(model, event.failure)
            else:
                self._needs_replan = self._needs_replan or f"engine {event.engine_id} ({model}) failed: {event.failure}"
        else:
            self._record_engine_end(engine)
        self._queues[model].extendleft(reversed(requeue))

    def _give_up(self, model: str, failure: str) -> None:
        """A model whose engines keep failing: its requests fail with the cause, the rest of the run goes on."""
        message = (f"model {model}: its engine failed {self._engine_failures[model]} times "
                   f"(last: {failure}); its requests are abandoned")
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
            if self._engine_failures[spec.model] >= self.settings.max_engine_failures:
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
    def current_app(self) -> AppGraph:
        """The app graph plus one node per model for requests beyond it (what the planner plans)."""
        if self._app_dirty or self._app is None:
            nodes = list(self.base_app.nodes) if self.base_app is not None else []
            for name, inputs in self._extra_inputs.items():
                model = name[: -len(EXTRA_SUFFIX)]
                nodes.append(LLMNode(name=name, model=model, input_tokens=list(inputs),
                                     max_tokens=self._extra_max_tokens[name]))
            self._app = AppGraph(name=self.base_app.name if self.base_app else "pool", nodes=nodes)
            self._app_dirty = False
        return self._app

    def _run_state(self) -> RunState:
        app = self.current_app()
        finished = {name: sorted(p.finished) for name, p in self._nodes.items() if p.finished}
        outputs = {name: dict(p.output_tokens) for name, p in self._nodes.items() if p.output_tokens}
        engines: dict[str, ExecutionPlan | None] = {}
        for model in app.models():
            running = self._engines_of(model)  # loading ones count as up: restarting them elsewhere loses more
            whole = bool(running) and all(e.plan == running[0].plan for e in running) \
                and len(running) == running[0].plan.replicas  # every replica of one plan is up
            engines[model] = running[0].plan if whole else None
        lengths = {}
        for model, observed in self._observed.items():
            if model in app.models() and observed:
                tokens, cut = zip(*observed, strict=True)
                base = self._base_lengths(model)
                lengths[model] = base.refined(np.asarray(tokens), censored=np.asarray(cut))
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
        app = self.current_app() if (self.base_app is not None or self._extra_inputs) else None
        if app is None:
            return
        started = time.perf_counter()
        try:
            if self._plan is None:
                state = self._run_state()
                plan = replan(app, self.cluster, state, self.settings.planner, seed=self.settings.seed,
                              profiles=self.profiles) if state.finished else plan_app(
                    app, self.cluster, self.settings.planner, seed=self.settings.seed, profiles=self.profiles)
            else:
                plan = replan(app, self.cluster, self._run_state(), self.settings.planner, seed=self.settings.seed,
                              profiles=self.profiles)
        except SamullmError as exc:
            self._fail_everything(f"planning failed: {exc}")
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

