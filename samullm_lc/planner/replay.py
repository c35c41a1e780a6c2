"""Faithful re-simulation of a plan, stage by stage, with the continuous-batching simulator.

Every engine (one model, one placement) is a set of replica simulators that lives from the stage that
starts it until a stage changes or drops it. Requests go to replicas round-robin as they are submitted.
A request of a node is submitted when the requests it reads have finished (on any engine) and its node
is in the stage; its prompt already includes their outputs (``workload.py``). A new or changed engine
computes nothing before its load time is over; a dropped or changed engine's unfinished requests start
again from scratch on the next engine of that model.

A stage ends when its first node finishes (a chain of vertically fused nodes counts as one). Engines
are simulated speculatively to the end of the work they were given (an engine that keeps its plan
continues exactly where it was, so a stage boundary only reads finish times). An engine is re-simulated
from its start, with the same inputs, only when it gets a request that arrives before its simulated
clock (a node joins a busy engine) or loses requests whose upstream engine was stopped. Engines that
feed themselves (below) are only simulated until the stage's end is known, and continued by the next
stage.

Vertical fusion: when a node and the node it reads run on the same engine, the engine is advanced in
increments of ``FEEDBACK_STEP_SECONDS`` and the downstream requests are submitted at the end of the
increment in which their upstream request finished (at most that late: the real pipeline also sees an
output only some time after the step that produced it); requests joining such an engine at a stage
start arrive at its clock, at most one increment after the stage start.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

import numpy as np

from samullm_lc.costmodel.simulator import ContinuousBatchingSimulator, SimulationResult
from samullm_lc.errors import ConfigError
from samullm_lc.planner.context import PlanningContext
from samullm_lc.planner.placement import Assignment
from samullm_lc.planner.stages import Group, StageState, stage_enders, stage_nodes

FEEDBACK_STEP_SECONDS = 2.0
"""Simulated seconds between submissions of requests fed by the same engine (vertical fusion)."""
_EPS = 1e-9
_SLOT = 1 << 32  # a request's place on an engine is replica * _SLOT + local id


@dataclass(slots=True)
class _Replica:
    """One simulated engine replica and the requests it was given, in order."""

    sim: ContinuousBatchingSimulator
    nodes: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # engine-local seconds
    result: SimulationResult | None = None


class Engine:
    """One model's engine under one placement; it computes from ``origin`` (global seconds, load done) on."""

    _uids = itertools.count()

    def __init__(self, ctx: PlanningContext, assignment: Assignment, started: float, load: float) -> None:
        self.uid = next(Engine._uids)
        self.ctx = ctx
        self.assignment = assignment
        self.started = started
        self.load = load
        self.origin = started + load
        engines = ctx.engines[assignment.model]
        self._scheduler = engines.scheduler(assignment.option)
        self._latency = engines.latency(assignment.option)
        self.replicas = [self._fresh() for _ in range(assignment.option.replicas)]
        self._next = 0
        self._stale: set[int] = set()  # replicas to re-simulate from scratch

    @property
    def model(self) -> str:
        """The model this engine serves."""
        return self.assignment.model

    def _fresh(self) -> _Replica:
        return _Replica(ContinuousBatchingSimulator(self._scheduler, self._latency))

    def add(self, nodes: np.ndarray, requests: np.ndarray, arrivals: np.ndarray, *, late_ok: bool = False
            ) -> np.ndarray:
        """Queue requests (node, request, global arrival seconds) round-robin; returns each one's slot code.

        With ``late_ok`` a request whose arrival is already behind its replica's clock arrives now;
        otherwise the replica is re-simulated from scratch.
        """
        work = self.ctx.workload.nodes
        prompt = np.array([work[n].prompt[r] for n, r in zip(nodes.tolist(), requests.tolist(), strict=True)],
                          dtype=np.int64)
        output = np.array([work[n].output[r] for n, r in zip(nodes.tolist(), requests.tolist(), strict=True)],
                          dtype=np.int64)
        which = (self._next + np.arange(requests.size)) % len(self.replicas)
        self._next += requests.size
        codes = np.empty(requests.size, dtype=np.int64)
        for index in np.unique(which).tolist():
            mask = which == index
            replica = self.replicas[index]
            local = np.maximum(0.0, arrivals[mask] - self.origin)
            if (local < replica.sim.now - _EPS).any():
                if late_ok:
                    local = np.maximum(local, replica.sim.now)
                else:
                    self._stale.add(index)
            first = len(replica.requests)
            if index not in self._stale:
                replica.sim.add_requests(prompt[mask], output[mask], local)
            replica.nodes.extend(nodes[mask].tolist())
            replica.requests.extend(requests[mask].tolist())
            replica.arrivals.extend(local.tolist())
            replica.result = None
            codes[mask] = index * _SLOT + first + np.arange(int(mask.sum()))
        return codes

    def remove(self, doomed: set[int]) -> None:
        """Take requests (slot codes) out again; their replicas are re-simulated without them."""
        for index, replica in enumerate(self.replicas):
            keep = [i for i in range(len(replica.requests)) if index * _SLOT + i not in doomed]
            if len(keep) == len(replica.requests):
                continue
            replica.nodes = [replica.nodes[i] for i in keep]
            replica.requests = [replica.requests[i] for i in keep]
            replica.arrivals = [replica.arrivals[i] for i in keep]
            self._stale.add(index)

    def settle(self, until: float | None = None) -> None:
        """Simulate every replica to the end of its work, or to global time ``until``."""
        horizon = None if until is None else until - self.origin
        for index, replica in enumerate(self.replicas):
            if index in self._stale:
                self._rebuild(replica)
            if horizon is not None and horizon < replica.sim.now:
                continue
            replica.result = replica.sim.run(until=horizon)
        self._stale.clear()

    def _rebuild(self, replica: _Replica) -> None:
        fresh = ContinuousBatchingSimulator(self._scheduler, self._latency)
        if replica.requests:
            nodes = self.ctx.workload.nodes
            pairs = list(zip(replica.nodes, replica.requests, strict=True))
            fresh.add_requests(np.array([nodes[n].prompt[r] for n, r in pairs]),
                               np.array([nodes[n].output[r] for n, r in pairs]), np.asarray(replica.arrivals))
        replica.sim = fresh
        replica.result = None

    def clock(self) -> float:
        """Global time of the least advanced replica's clock."""
        return self.origin + min(r.sim.now for r in self.replicas)

    def drain_seconds(self, now: float) -> float:
        """Rough seconds until the replicas' queues empty at global time ``now`` (0 if nothing waits)."""
        local = now - self.origin
        longest = 0.0
        for replica, result in zip(self.replicas, self.results(), strict=True):
            arrived = np.asarray(replica.arrivals) <= local
            waiting = int(np.count_nonzero(arrived & np.isnan(result.first_token_seconds)))
            finished = int(np.count_nonzero(result.finish_seconds <= local))
            if waiting and finished >= 2 and local > 0:
                longest = max(longest, waiting * local / finished)
        return longest

    def idle(self) -> bool:
        """Whether every replica has finished all it was given."""
        return all(r.result is not None and r.result.finished for r in self.replicas)

    def results(self) -> list[SimulationResult]:
        """Each replica's current result (computed once per change; a stale replica is re-simulated first)."""
        if self._stale:
            self.settle()
        for replica in self.replicas:
            if replica.result is None:
                replica.result = replica.sim.result()
        return [r.result for r in self.replicas]  # type: ignore[misc]

    def finish_times(self, codes: np.ndarray) -> np.ndarray:
        """Global finish times (nan if not finished in the simulation) of requests given by slot code."""
        out = np.full(codes.size, np.nan)
        results = self.results()
        replica, local = np.divmod(codes, _SLOT)
        for index in np.unique(replica).tolist():
            mask = replica == index
            out[mask] = self.origin + results[index].finish_seconds[local[mask]]
        return out


@dataclass(slots=True)
class EntryRecord:
    """What one engine did in one stage."""

    assignment: Assignment
    nodes: list[int]
    load: float
    finished: list[int]
    requests_done: dict[int, int]


@dataclass(slots=True)
class StageRecord:
    """One replayed stage."""

    start: float
    end: float
    entries: list[EntryRecord]


class ExactRun:
    """The faithful state of a plan being replayed: committed finish times and the engines that are up."""

    def __init__(self, ctx: PlanningContext, *, engines: dict[str, Assignment] | None = None) -> None:
        self.ctx = ctx
        self.now = 0.0
        nodes = ctx.workload.nodes
        self.done_at = [np.where(n.done, 0.0, np.nan) for n in nodes]
        self.engine_of = [np.full(n.num_requests, -1, dtype=np.int64) for n in nodes]
        self.slot_of = [np.full(n.num_requests, -1, dtype=np.int64) for n in nodes]
        self.live: dict[str, Engine] = {}
        self._by_uid: dict[int, Engine] = {}
        self.stages: list[StageRecord] = []
        for assignment in (engines or {}).values():
            self._start(assignment, 0.0, 0.0)

    def fork(self) -> ExactRun:
        """An independent copy of this run (simulators included) to continue another way."""
        memo: dict[int, object] = {id(self.ctx): self.ctx}
        for engine in self.live.values():
            memo[id(engine._scheduler)] = engine._scheduler
            memo[id(engine._latency)] = engine._latency
        return copy.deepcopy(self, memo)

    # ---- views -------------------------------------------------------------------------------------
    def finished_nodes(self) -> set[int]:
        """Nodes whose every request has finished (by the current time)."""
        return {n for n, done in enumerate(self.done_at) if not np.isnan(done).any()}

    def done(self) -> bool:
        """Whether every request of the app has finished."""
        return all(not np.isnan(done).any() for done in self.done_at)

    def end_seconds(self) -> float:
        """When the last request finished (the plan's end-to-end time once ``done``)."""
        return max((float(np.nanmax(d)) for d in self.done_at if d.size and not np.isnan(d).all()), default=0.0)

    def view(self) -> StageState:
        """The stage model's view: tokens left per node (in-flight progress counted) and the engines up."""
        ctx = self.ctx
        remaining = np.zeros(ctx.num_nodes)
        in_flight = self._in_flight_tokens()
        for n, work in enumerate(ctx.workload.nodes):
            open_ = np.isnan(self.done_at[n])
            if open_.any():
                remaining[n] = max(float(work.tokens[open_].sum()) - in_flight[n], 1.0)
            else:
                in_flight[n] = 0.0
        engines = {m: e.assignment for m, e in self.live.items()}
        ready = {m: e.origin for m, e in self.live.items()}
        return StageState(time=self.now, remaining=remaining, engines=engines, in_flight=in_flight, ready=ready)

    def _in_flight_tokens(self) -> np.ndarray:
        """Per node, tokens unfinished requests on live engines have processed by now (outputs interpolated)."""
        progress = np.zeros(self.ctx.num_nodes)
        nodes = self.ctx.workload.nodes
        for engine in self.live.values():
            for replica, result in zip(engine.replicas, engine.results(), strict=True):
                if not replica.requests:
                    continue
                first = engine.origin + result.first_token_seconds
                finish = engine.origin + result.finish_seconds
                started = (first <= self.now) & ~(finish <= self.now)
                if not started.any():
                    continue
                node_ids = np.asarray(replica.nodes)[started]
                request_ids = np.asarray(replica.requests)[started]
                span = np.where(np.isnan(finish[started]), np.inf, np.maximum(finish[started] - first[started], _EPS))
                share = np.minimum(1.0, (self.now - first[started]) / span)
                for n in np.unique(node_ids).tolist():
                    mask = node_ids == n
                    r = request_ids[mask]
                    progress[n] += float((nodes[n].prompt[r] + share[mask] * nodes[n].output[r]).sum())
        return progress

    # ---- one stage ---------------------------------------------------------------------------------
    def run_stage(self, group: Group, listed: dict[str, list[int]] | None = None) -> StageRecord:
        """Run ``group`` until its first node finishes; ``listed`` fixes each engine's nodes (replaying a plan)."""
        start = self.now
        chosen = {a.model: a for a in group}
        for model in [m for m, e in self.live.items() if chosen.get(m) != e.assignment]:
            self._stop(model)
        for model, assignment in chosen.items():
            if model not in self.live:
                self._start(assignment, start, self.ctx.engines[model].load(assignment.option))
        nodes = self._stage_nodes(chosen, listed)
        bound = np.inf
        for engine in self._engine_order(nodes):
            mine = [n for n in nodes if self.ctx.node_model[n] == engine.model]
            self._feed(engine, mine, bound)
            first = self._first_finish(mine)
            bound = min(bound, np.inf if first is None else first)
        end = self._first_finish(nodes)
        if end is None:
            raise ConfigError(
                f"stage {len(self.stages)} ({', '.join(sorted(chosen))}) can make no progress: its nodes wait for "
                "requests that no engine of the stage runs; add the upstream nodes' models to the stage"
            )
        loads = {m: (e.load if e.started == start else 0.0) for m, e in self.live.items()}
        record = self._commit(start, end, chosen, nodes, loads)
        self.stages.append(record)
        return record

    def _stage_nodes(self, chosen: dict[str, Assignment], listed: dict[str, list[int]] | None) -> list[int]:
        unfinished = np.array([np.isnan(d).any() for d in self.done_at])
        if listed is None:
            return stage_nodes(self.ctx, unfinished, set(chosen))
        wanted = {n for model, ns in listed.items() if model in chosen for n in ns}
        return [n for n in range(self.ctx.num_nodes) if n in wanted and unfinished[n]]

    def _engine_order(self, nodes: list[int]) -> list[Engine]:
        """Live engines, each after the engines that feed it in this stage."""
        member = set(nodes)
        feeds: dict[str, set[str]] = {m: set() for m in self.live}
        for n in nodes:
            model = self.ctx.node_model[n]
            for u in self.ctx.upstream[n]:
                source = self.ctx.node_model[u]
                if u in member and source != model and source in feeds:
                    feeds[model].add(source)
        order: list[Engine] = []
        placed: set[str] = set()
        while len(order) < len(feeds):
            ready = [m for m in feeds if m not in placed and feeds[m] <= placed]
            if not ready:
                raise ConfigError("engines of a stage feed each other in a cycle; split those nodes over two stages")
            for m in ready:
                placed.add(m)
                order.append(self.live[m])
        return order

    def _feed(self, engine: Engine, mine: list[int], bound: float) -> None:
        """Submit every request of the engine's stage nodes that can arrive, then simulate the engine."""
        member = set(mine)
        fused = any(u in member for n in mine for u in self.ctx.upstream[n])
        self._submit_many(engine, mine, late_ok=fused)
        if fused:
            self._settle_fused(engine, mine, bound)
        else:
            engine.settle()

    def _settle_fused(self, engine: Engine, mine: list[int], bound: float) -> None:
        """Advance in increments, submitting requests (in arrival order) as their upstream requests finish,
        until one of the engine's stage-ending nodes has finished or the clock passes ``bound`` (another
        engine's node finishes by then, so the stage ends by then).

        The engine is not simulated further ahead: a later stage continues it if it keeps its plan. While
        the engine has a long queue, a late submission changes nothing (the request would wait anyway), so
        the increment grows to half the time the queue takes to drain.
        """
        horizon = max(self.now, engine.origin, engine.clock())
        enders = stage_enders(self.ctx, mine)
        step = FEEDBACK_STEP_SECONDS
        while True:
            horizon += step
            engine.settle(until=horizon)
            added = self._submit_many(engine, mine, by=horizon)
            if horizon >= bound or self._some_finished(enders):
                return
            if not added and engine.idle():
                upcoming = self._next_arrival(mine)
                if upcoming is None:
                    return
                horizon = max(horizon, upcoming - FEEDBACK_STEP_SECONDS)
            step = max(FEEDBACK_STEP_SECONDS, 0.5 * engine.drain_seconds(horizon))

    def _some_finished(self, nodes: list[int]) -> bool:
        """Whether every open request of some node has a (simulated) finish time."""
        for n in nodes:
            times = self._finish_times(n, np.flatnonzero(np.isnan(self.done_at[n])))
            if not np.isnan(times).any():
                return True
        return False

    def _next_arrival(self, mine: list[int]) -> float | None:
        """Earliest arrival among unsubmitted requests of ``mine`` whose upstream requests all have finish times."""
        best: float | None = None
        for n in mine:
            arrival, ok, _ = self._arrivals(n)
            if ok.any():
                first = float(arrival[ok].min())
                best = first if best is None else min(best, first)
        return best

    def _arrivals(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For node ``n``'s unsubmitted requests: arrival times, whether known, and the request ids."""
        requests = np.flatnonzero(np.isnan(self.done_at[n]) & (self.engine_of[n] < 0))
        arrival = np.full(requests.size, self.now)
        ok = np.ones(requests.size, dtype=bool)
        for u in self.ctx.upstream[n]:
            times = self._finish_times(u, requests)
            ok &= ~np.isnan(times)
            arrival = np.fmax(arrival, times)
        return arrival, ok, requests

    def _submit_many(self, engine: Engine, nodes: list[int], by: float | None = None, late_ok: bool = False) -> int:
        """Queue the ready requests of ``nodes`` (those arrived by ``by``, if given) in arrival order."""
        batch = []
        for n in nodes:
            arrival, ok, requests = self._arrivals(n)
            if by is not None:
                ok &= arrival <= by + _EPS
            if ok.any():
                batch.append((np.full(int(ok.sum()), n), requests[ok], arrival[ok]))
        if not batch:
            return 0
        node_ids, requests, arrival = (np.concatenate(parts) for parts in zip(*batch, strict=True))
        order = np.argsort(arrival, kind="stable")
        node_ids, requests, arrival = node_ids[order], requests[order], arrival[order]
        codes = engine.add(node_ids, requests, arrival, late_ok=late_ok or by is not None)
        for n in np.unique(node_ids).tolist():
            mask = node_ids == n
            self.engine_of[n][requests[mask]] = engine.uid
            self.slot_of[n][requests[mask]] = codes[mask]
        return int(requests.size)

    def _finish_times(self, node: int, requests: np.ndarray) -> np.ndarray:
        """Finish times (nan if unknown) of ``requests`` of ``node``: committed, or simulated on a live engine."""
        out = self.done_at[node][requests].copy()
        open_ = np.isnan(out)
        if not open_.any():
            return out
        uids = self.engine_of[node][requests]
        for uid in np.unique(uids[open_ & (uids >= 0)]).tolist():
            mask = open_ & (uids == uid)
            out[mask] = self._by_uid[uid].finish_times(self.slot_of[node][requests[mask]])
        return out

    def _first_finish(self, nodes: list[int]) -> float | None:
        """When the stage's first node (``stage_enders``) finishes in the simulation; None if none can."""
        best: float | None = None
        for n in stage_enders(self.ctx, nodes):
            times = self._finish_times(n, np.flatnonzero(np.isnan(self.done_at[n])))
            if times.size and not np.isnan(times).any():
                end = float(times.max())
                best = end if best is None else min(best, end)
        return best

    def _commit(self, start: float, end: float, chosen: dict[str, Assignment], nodes: list[int],
                loads: dict[str, float]) -> StageRecord:
        """Fix every finish time up to ``end`` and move the clock there."""
        before = self.finished_nodes()
        for n in range(self.ctx.num_nodes):
            open_ = np.flatnonzero(np.isnan(self.done_at[n]) & (self.engine_of[n] >= 0))
            if open_.size:
                times = self._finish_times(n, open_)
                hit = ~np.isnan(times) & (times <= end + _EPS)
                self.done_at[n][open_[hit]] = times[hit]
        self.now = end
        after = self.finished_nodes()
        entries = []
        for model, assignment in sorted(chosen.items()):
            mine = [n for n in nodes if self.ctx.node_model[n] == model]
            entries.append(EntryRecord(
                assignment=assignment, nodes=mine, load=loads.get(model, 0.0),
                finished=[n for n in mine if n in after and n not in before],
                requests_done={n: int((~np.isnan(self.done_at[n])).sum()) for n in mine},
            ))
        return StageRecord(start=start, end=end, entries=entries)

    # ---- engines -----------------------------------------------------------------------------------
    def _start(self, assignment: Assignment, started: float, load: float) -> None:
        engine = Engine(self.ctx, assignment, started, load)
        self.live[assignment.model] = engine
        self._by_uid[engine.uid] = engine

    def _stop(self, model: str) -> None:
        """Drop an engine: its unfinished requests lose their progress, and what they fed is taken back."""
        engine = self.live.pop(model)
        lost = {}
        for n in range(self.ctx.num_nodes):
            open_ = (self.engine_of[n] == engine.uid) & np.isnan(self.done_at[n])
            if open_.any():
                self.engine_of[n][open_] = -1
                self.slot_of[n][open_] = -1
                lost[n] = np.flatnonzero(open_)
        for n, requests in lost.items():
            self._withdraw_downstream(n, requests)

    def _withdraw_downstream(self, node: int, requests: np.ndarray) -> None:
        """Requests fed by requests that will not finish as simulated are taken back from their engines."""
        for d in self.ctx.workload.downstream[node]:
            queued = requests[(self.engine_of[d][requests] >= 0) & np.isnan(self.done_at[d][requests])]
            if queued.size == 0:
                continue
            touched = set()
            for uid in np.unique(self.engine_of[d][queued]).tolist():
                mask = self.engine_of[d][queued] == uid
                engine = self._by_uid[uid]
                engine.remove(set(self.slot_of[d][queued[mask]].tolist()))
                touched.add(engine)
            self.engine_of[d][queued] = -1
            self.slot_of[d][queued] = -1
            for engine in touched:
                self._reindex(engine)
            self._withdraw_downstream(d, queued)

    def _reindex(self, engine: Engine) -> None:
        """Recompute where each request of ``engine`` sits after some were removed."""
        for index, replica in enumerate(engine.replicas):
            for local, (n, r) in enumerate(zip(replica.nodes, replica.requests, strict=True)):
                self.slot_of[n][r] = index * _SLOT + local
