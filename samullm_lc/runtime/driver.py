"""The pool's driver: one thread that runs the plan, keeps engines fed, and re-plans as batches finish.

It always runs the first stage of the latest plan (from the start, a plan given to the pool, if any). Engines
of that stage whose placement is unchanged keep running; the others stop (their unfinished requests go back to
the front of their model's queue) and the new ones start as their devices free up. It re-plans (``planning.py``:
the planner's ``replan`` on what it observed) when a model finishes its share of the app, work arrives for a
model the stage does not run, the stage runs longer than planned by more than ``replan_threshold``, an engine
fails, a node leaves the cluster (the rest of the run is planned without its devices), or the client's
notices complete a node or end its intake; ``replan_triggers.py`` names them.

Requests wait in per-model queues; each engine holds at most ``max_in_flight`` of them, so a re-plan can
move the rest. Every request resolves its future exactly once: a result, or a ``RequestError``. A request
that cannot be taken in fails alone; if planning fails, every outstanding request fails with the reason
(recorded in the report's ``errors``); if the driver itself fails, every future, queued or not yet taken,
fails with the cause. Nothing is kept per finished request beyond the app graph's own bookkeeping.

The parts: ``RequestBook`` (one record per request, the queues, the app's progress), ``EngineSet`` (the
engines and where they run), ``RunRecorder`` (the report), ``ReplanTriggers`` (when to re-plan). The driver
takes requests in, turns backend events into calls on those parts, and plans.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial

from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.errors import JournalError, PoolError, RequestError, SamullmError
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.plan import Plan
from samullm_lc.runtime.backends.base import Backend, DevicesLost, EngineReady, EngineStopped, Event, RequestDone
from samullm_lc.runtime.client_notices import ClientNotices
from samullm_lc.runtime.driver_settings import DriverSettings
from samullm_lc.runtime.engine_set import EngineSet, RunningEngine
from samullm_lc.runtime.journal import Journal
from samullm_lc.runtime.planning import plan_rest
from samullm_lc.runtime.replan_triggers import ReplanReason, ReplanTrigger, ReplanTriggers
from samullm_lc.runtime.report import RunReport
from samullm_lc.runtime.request_book import RequestBook, RequestRecord
from samullm_lc.runtime.requests import GenerationResult, Request, content_key
from samullm_lc.runtime.run_recorder import RunRecorder

logger = logging.getLogger(__name__)


class Driver:
    """Takes requests in, runs the plan on the engines, and re-plans; runs in the pool's driver thread."""

    def __init__(self, app: AppGraph | None, cluster: Cluster, backend: Backend, *, models: list[str],
                 profiles: dict[str, EngineProfile], journal: Journal | None, settings: DriverSettings,
                 on_progress: Callable[[RunReport], None] | None = None, plan: Plan | None = None) -> None:
        self.cluster = cluster
        self.backend = backend
        self.profiles = profiles
        self.journal = journal
        self.settings = settings
        self.on_progress = on_progress
        self.inbox: deque[tuple[Request, Future]] = deque()
        self._intake_lock = threading.Lock()
        self._intake_closed: str | None = None  # why the driver takes no more requests (None: it takes them)
        self.closing = threading.Event()
        self.cancelling = threading.Event()  # close without waiting: fail what is outstanding
        self.notices = ClientNotices()  # the client's counts of requests to come, and the end of its intake
        self.idle = threading.Condition()
        self.book = RequestBook(app, models, seed=settings.seed)
        self.engines = EngineSet(backend, max_in_flight=settings.max_in_flight)
        self.recorder = RunRecorder(backend=backend.name, cluster=str(cluster), planner=settings.planner,
                                    models=models)
        self.triggers = ReplanTriggers(threshold=settings.replan_threshold,
                                       min_replan_seconds=settings.min_replan_seconds)
        self._plan: Plan | None = None
        self._given_plan = plan  # started as the run starts, instead of planning at start
        self._occurrences: Counter[str] = Counter()  # journal keys: how often each content was seen
        self._pending_journal: list[tuple[str, GenerationResult]] = []
        self._last_progress = 0.0
        if app is not None:
            for node in app.nodes:
                self.recorder.expect(node.model, node.num_requests)
            if plan is None:  # the graph says what is coming: start loading engines now
                self.triggers.add(ReplanTrigger.start())

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """The driver thread's body: until closed and idle."""
        stop_reason = "the pool was closed; submit requests before close()"
        try:
            if self._given_plan is not None:
                self._start_plan(self._given_plan, ReplanTrigger.plan_given().detail, 0.0, self.book.app)
            while True:
                counts, finishing = self.notices.take()  # before the inbox: what was offered first is counted
                self._take_inbox()
                if counts or finishing:
                    self._apply_notices(counts, finishing)
                if self.cancelling.is_set() and self.book.outstanding:
                    self.recorder.interrupted()
                    self._fail_all("the run was interrupted before this request finished")
                if self.closing.is_set() and self.is_idle():
                    break
                if self.triggers.pending:
                    self._replan()
                self.engines.start_waiting(skip=self.book.given_up_models)
                self._dispatch()
                busy = self.engines.busy() or self.inbox
                for event in self.backend.wait(0.0 if self.inbox else self.settings.poll_seconds if busy else 0.5):
                    self._handle(event)
                self._flush_journal()
                self.triggers.check_overrun(self.backend.now(), self.recorder.last_planning_seconds)
                self._notify()
        except BaseException as exc:  # the driver must never leave futures hanging
            stop_reason = f"the engine pool's driver failed: {type(exc).__name__}: {exc}"
            self._fail_all(stop_reason)
            raise
        finally:
            self._close_intake(stop_reason)
            try:
                self._flush_journal()
                self.recorder.close_stage(self.snapshot().seconds)
                for engine in self.engines:
                    self._record_span(engine)
                self.engines.close()
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
        return not self.book.outstanding and not self.inbox

    def has_node(self, name: str) -> bool:
        """Whether the app graph has a node of this name."""
        return self.book.has_node(name)

    def snapshot(self) -> RunReport:
        """The report so far (models' progress, re-plans)."""
        return self.recorder.snapshot(self.backend.now())

    # ---- requests in ---------------------------------------------------------------------------------
    def offer(self, request: Request, future: Future) -> str | None:
        """Hand a request to the driver (any thread); returns why it was not taken, or None if it was."""
        with self._intake_lock:
            if self._intake_closed is not None:
                return self._intake_closed
            self.inbox.append((request, future))
            return None

    def _apply_notices(self, counts: dict[str, int], finishing: bool) -> None:
        """Apply the client's notices (``client_notices.py``): nodes expect what it counts (or, once its intake
        finished, only what they were given). Re-plan if that completed a node (its readers can start), finished a
        model (the stage boundary) or, at the end of intake, dropped any request."""
        fewer, completed = self.book.expect(counts)
        dropped = self.book.finish_intake() if finishing else Counter()
        for model in {*fewer, *dropped}:
            self.recorder.expect_fewer(model, fewer[model] + dropped[model])
        done = [m for m in fewer if fewer[m] > 0 and self.book.remaining(m) <= 0 and not self.book.outstanding_of(m)]
        if dropped:
            self.triggers.add(ReplanTrigger.intake_finished(sum(dropped.values())))
        elif completed or done:
            self.triggers.add(ReplanTrigger.expectations(completed, done))

    def _close_intake(self, reason: str) -> None:
        """Take no more requests; the ones offered but not taken in fail with ``reason``."""
        with self._intake_lock:
            self._intake_closed = reason
            left, self.inbox = list(self.inbox), deque()
        for request, future in left:
            self._refuse(request, future, f"request {request.id} to {request.model}: {reason}")

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
        if self._plan is None and self.book.outstanding and self.triggers.pending is None:
            self.triggers.add(ReplanTrigger.start())

    def _register(self, request: Request, future: Future) -> None:
        """Journal hits resolve at once; the rest join their model's queue. Everything that can fail (the
        journal's key and lookup) happens before any bookkeeping changes."""
        given_up = self.book.given_up(request.model)
        if given_up is not None:
            raise PoolError(given_up)
        if not future.set_running_or_notify_cancel():
            return  # the caller cancelled it before it was taken in: nothing to run, nobody waiting
        known = self._journalled(request)
        record = self.book.register(request, future)
        if record.beyond_app:
            self.recorder.expect(request.model)
        self.recorder.submitted(request.model, from_journal=known is not None)
        if known is not None:
            self._complete(record, known, from_engine=False)
            return
        self.book.enqueue(record)
        model = request.model
        if record.beyond_app and self._plan is not None and not self.engines.serves(model) \
                and self.triggers.unplanned(model):
            self.triggers.add(ReplanTrigger.beyond_app(model))

    def _reject(self, request: Request, future: Future, message: str) -> None:
        """Fail a request that could not be taken in (registered or not)."""
        record = self.book.get(request.id)
        if record is not None:
            self._fail(record, message)
        else:
            self._refuse(request, future, message)

    def _refuse(self, request: Request, future: Future, message: str) -> None:
        """Fail a request that was never registered."""
        self.recorder.refused(request.model)
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
            self.recorder.journal_recomputed(str(exc))
            return None

    # ---- results out ---------------------------------------------------------------------------------
    def _handle(self, event: Event) -> None:
        if isinstance(event, RequestDone):
            self.engines.request_done(event.engine_id)
            record = self.book.get(event.request_id)
            if record is None:
                return  # already resolved (a re-run after a restart): exactly once
            if event.error is not None:
                request = record.request
                self._fail(record, f"request {request.id} to {request.model} failed: {event.error}")
            else:
                self._complete(record, event.result, from_engine=True)
        elif isinstance(event, EngineReady):
            engine = self.engines.get(event.engine_id)
            if engine is not None:
                self.engines.ready(event.engine_id, self._model_load(engine.spec.model, event))
        elif isinstance(event, EngineStopped):
            self._engine_gone(event)
        elif isinstance(event, DevicesLost):  # a node left: plan on what is left (its engines' stops follow)
            self.recorder.engine_failure(self.backend.now(), event.reason)
            try:
                self.cluster = self.cluster.without(event.devices)
            except SamullmError as exc:  # no device left: nothing can run
                self._fail_all(f"{event.reason}; {exc}")
                return
            self.triggers.add(ReplanTrigger.devices_lost(event.reason))

    def _model_load(self, model: str, event: EngineReady) -> float:
        """The observed start without the process start-up, which re-planned engines do not pay (they start in
        stopped engines' processes): a fresh process's start less the profile's process start."""
        profile = self.profiles.get(model)
        extra = profile.process_start_seconds if event.fresh_process and profile is not None else None
        return max(0.0, event.load_seconds - (extra or 0.0))

    def _complete(self, record: RequestRecord, result: GenerationResult, *, from_engine: bool) -> None:
        if record.resolved:
            return
        request = record.request
        self.recorder.done(request.model, result, self.backend.now(), from_journal=not from_engine)
        if from_engine and self.journal is not None:
            self._pending_journal.append((request.key, result))
        if self.book.complete(record, result, observe=from_engine):
            self.triggers.add(ReplanTrigger.model_finished(request.model))

    def _fail(self, record: RequestRecord, message: str, *, replan: bool = True) -> None:
        if record.resolved:
            return
        self.recorder.failed(record.request.model)
        if self.book.fail(record, message) and replan:
            self.triggers.add(ReplanTrigger.model_finished(record.request.model))

    def _fail_all(self, message: str) -> None:
        """Fail every outstanding request with ``message`` (planning failed, or the driver itself did)."""
        self.recorder.add_error(message)
        for record in self.book.take_all():
            try:
                self._fail(record, message, replan=False)
            except Exception:  # the bookkeeping itself is broken (the driver failed): still resolve the future
                logger.exception("request %s could not be failed in order; its future fails alone", record.request.id)
                self.book.abandon(record, message)

    def _flush_journal(self) -> None:
        """Write finished results to the journal. If it cannot be written (a full disk), the run goes on
        without it and the report says from when results are not journalled."""
        if self.journal is None or not self._pending_journal:
            return
        try:
            self.journal.put_many(self._pending_journal)
        except JournalError as exc:
            self.recorder.add_error(f"{exc}; results from {self.backend.now():.1f} s on are not journalled, so a "
                                    "resumed run recomputes them")
            self.journal = None
        self._pending_journal = []

    # ---- engines -------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Top every ready engine up from its model's queue (the engine set decides how many each takes)."""
        for model in self.book.queued_models():
            self.engines.dispatch(model, self.book.queued(model), partial(self.book.next_batch, model))

    def _engine_gone(self, event: EngineStopped) -> None:
        """An engine stopped: its unfinished requests go back to the front of the queue. If it failed, a request
        that was on ``max_attempts`` failed engines fails, and the model is re-planned or given up."""
        engine = self.engines.remove(event.engine_id)
        if engine is None:
            return
        model = engine.spec.model
        self._record_span(engine)
        unfinished = self.book.on_engine(event.unfinished)
        if event.failure is not None:
            failures = 0 if event.node_lost else self.engines.count_failure(model)
            self.recorder.engine_failure(self.backend.now(), event.failure)
            for record in unfinished if not event.node_lost else ():  # a lost node is no request's fault
                request = record.request
                if request.attempts >= self.settings.max_attempts:
                    self._fail(record, f"request {request.id} to {model} was on {request.attempts} engines that "
                                       f"failed; last failure: {event.failure}")
            unfinished = [record for record in unfinished if not record.resolved]
        given_up = self.book.given_up(model)
        if given_up is not None:  # a replica of a given-up model stopped: its requests cannot run anywhere
            for record in unfinished:
                self._fail(record, given_up)
            return
        self.book.requeue(unfinished)
        if event.failure is None or event.node_lost:  # a lost node re-plans once, for all its engines
            return
        if event.permanent or failures >= self.settings.max_engine_failures:
            self._give_up(model, event.failure)  # fails the queue, re-queued requests included
        else:
            self.triggers.add(ReplanTrigger.engine_failed(event.engine_id, model, event.failure))

    def _give_up(self, model: str, failure: str) -> None:
        """A model whose engines keep failing: its requests, queued or still to come, fail with the cause; the
        rest of the run goes on."""
        message = (f"model {model}: its engine failed {self.engines.failures(model)} time(s) "
                   f"(last: {failure}); its requests are abandoned")
        queued = self.book.give_up(model, message)
        self.recorder.add_error(message)
        for record in queued:
            self._fail(record, message)
        self.triggers.add(ReplanTrigger.model_given_up(message))

    def _record_span(self, engine: RunningEngine) -> None:
        self.recorder.engine_span(engine.spec, started=engine.started_at, ready=engine.ready_at,
                                  stopped=self.backend.now(), requests_done=engine.requests_done)

    # ---- the plan ------------------------------------------------------------------------------------
    def _replan(self) -> None:
        """Plan what is left (``RequestBook.planned_app``) and make the engines match the plan's first stage."""
        if (pending := self.triggers.pending) is not None and pending.reason is ReplanReason.STAGE_OVERRUN:
            self._unstall()
        trigger = self.triggers.take(self.book.queued_models())
        app = self.book.planned_app()
        if trigger is None or app is None:
            return
        started = time.perf_counter()
        settings = self.settings
        try:
            plan = plan_rest(app, self.cluster, self.book, self.engines, first=self._plan is None,
                             planner=settings.planner, seed=settings.seed, profiles=self.profiles,
                             now=self.backend.now())
        except SamullmError as exc:
            self._fail_all(f"planning failed: {exc}")
            return
        self._start_plan(plan, trigger.detail, time.perf_counter() - started, app)

    def _unstall(self) -> None:
        """A stage overran with every running engine idle while requests of other models wait: the plan waits for
        calls the app graph expected of the running models that have not come (an over-estimate the client did
        not correct). Those nodes now expect only what they were given; more of their calls run beyond the graph."""
        running = {engine.spec.model for engine in self.engines}
        waiting = [m for m in self.book.queued_models() if m not in running]
        if not waiting or any(self.book.outstanding_of(m) for m in running):
            return
        fewer, _ = self.book.expect(self.book.assigned_counts(running))
        for model, count in fewer.items():
            self.recorder.expect_fewer(model, count)

    def _start_plan(self, plan: Plan, reason: str, planning_seconds: float, app: AppGraph | None) -> None:
        """Record the plan (made for ``app``, for ``reason``) and make the engines match its first stage."""
        now = self.backend.now()
        self.recorder.planned(plan, now=now, reason=reason, planning_seconds=planning_seconds,
                              node_models={n.name: n.model for n in app.nodes} if app is not None else {})
        self._plan = plan
        stage = plan.stages[0] if plan.stages else None
        self.triggers.stage_started(now, stage.end_seconds - stage.start_seconds if stage else math.inf)
        self.engines.reconcile(stage)
