"""Faithful re-simulation of a plan, stage by stage, with the continuous-batching simulator.

Every engine (one model, one placement) is a set of replica simulators that lives from the stage that
starts it until a stage changes or drops it. Requests go to replicas round-robin as they are submitted,
except that a request reading a request on the same engine goes to that request's replica. A request of
a node is submitted when its node is in the stage and each request it reads has finished (on any
engine) or is on that replica; its prompt already includes their outputs (``workload.py``). A new or
changed engine computes nothing before its load time is over; a dropped or changed engine's unfinished
requests start again from scratch on the next engine of that model.

Vertical fusion: when a node and the node it reads run on the same engine, both nodes' requests are
submitted together and the replica's simulator holds each downstream request back until the request it
reads finishes (``ContinuousBatchingSimulator.add_requests``'s ``after``): the downstream request arrives
exactly at that finish, on the same replica (the runtime would send it to the least loaded one).

A stage ends when its first node finishes (a chain of vertically fused nodes counts as one). Engines
are simulated until that end is known, up to horizons that double, not to the end of their work: a
chain of nodes may run long past the stage, and the work would be wasted on an engine the next stage
changes. An engine that keeps its plan continues exactly where it was. An engine is re-simulated from
its start, with the same inputs, only when it gets a request that arrives before its simulated clock (a
node joins a busy engine) or loses requests whose upstream engine was stopped.
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

STAGE_HORIZON_SECONDS = 30.0
"""Simulated seconds a stage's engines are first advanced by while its end is unknown (then twice as far, ...)."""
_EPS = 1e-9
_SLOT = 1 << 32  # a request's place on an engine is replica * _SLOT + local id


@dataclass(slots=True)
class _Replica:
    """One simulated engine replica and the requests it was given, in order (a request's place is its id)."""

    sim: ContinuousBatchingSimulator
    nodes: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # engine-local seconds, before waiting for upstream
    place: dict[tuple[int, int], int] = field(default_factory=dict)  # (node, request) -> place
    result: SimulationResult | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> _Replica:
        """A copy for a forked run: the lists and dict hold numbers and tuples, so shallow copies will do
        (``copy.deepcopy`` walked every entry); the result is shared, as it is replaced, never changed."""
        clone = _Replica(copy.deepcopy(self.sim, memo), self.nodes.copy(), self.requests.copy(),
                         self.arrivals.copy(), self.place.copy(), self.result)
        memo[id(self)] = clone
        return clone


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
        self.replicas = [_Replica(self._simulator()) for _ in range(assignment.option.replicas)]
        self._next = 0  # the replica the next request without a replica of its own goes to
        self._stale: set[int] = set()  # replicas to re-simulate from scratch

    @property
    def model(self) -> str:
        """The model this engine serves."""
        return self.assignment.model

    def _simulator(self) -> ContinuousBatchingSimulator:
        return ContinuousBatchingSimulator(self._scheduler, self._latency)

    def add(self, node: int, requests: np.ndarray, arrivals: np.ndarray, replicas: np.ndarray) -> np.ndarray:
        """Queue requests of ``node`` arriving at global ``arrivals`` seconds on the given replicas (-1: the next
        one round-robin); returns each one's slot code.

        Each waits, in its replica's simulator, for the requests of upstream nodes it reads on that replica. A
        request arriving before its replica's clock makes the replica re-simulate from scratch.
        """
        which = replicas.copy()
        free = which < 0
        which[free] = (self._next + np.arange(int(free.sum()))) % len(self.replicas)
        self._next += int(free.sum())
        codes = np.empty(requests.size, dtype=np.int64)
        for index in np.unique(which).tolist():
            mask = which == index
            replica = self.replicas[index]
            local = np.maximum(0.0, arrivals[mask] - self.origin)
            if (local < replica.sim.now - _EPS).any():
                self._stale.add(index)
            first = len(replica.requests)
            mine = requests[mask].tolist()
            replica.nodes.extend([node] * len(mine))
            replica.requests.extend(mine)
            replica.arrivals.extend(local.tolist())
            replica.place.update({(node, r): first + i for i, r in enumerate(mine)})
            replica.result = None
            if index not in self._stale:
                self._submit(replica, first)
            codes[mask] = index * _SLOT + first + np.arange(len(mine))
        return codes

    def _submit(self, replica: _Replica, first: int) -> None:
        """Hand the replica's requests from place ``first`` on to its simulator, each after the upstream
        requests it reads on this replica."""
        work, place = self.ctx.workload.nodes, replica.place
        nodes = np.asarray(replica.nodes[first:], dtype=np.int64)
        requests = np.asarray(replica.requests[first:], dtype=np.int64)
        prompt, output = np.empty(nodes.size, np.int64), np.empty(nodes.size, np.int64)
        for n in np.unique(nodes).tolist():
            mask = nodes == n
            prompt[mask], output[mask] = work[n].prompt[requests[mask]], work[n].output[requests[mask]]
        after = [[place[u, r] for u in work[n].upstream if (u, r) in place]
                 for n, r in zip(replica.nodes[first:], replica.requests[first:], strict=True)]
        replica.sim.add_requests(prompt, output, np.asarray(replica.arrivals[first:]), after)

    def remove(self, doomed: set[int]) -> None:
        """Take requests (slot codes) out again; their replicas are re-simulated without them."""
        for index, replica in enumerate(self.replicas):
            keep = [i for i in range(len(replica.requests)) if index * _SLOT + i not in doomed]
            if len(keep) == len(replica.requests):
                continue
            replica.nodes = [replica.nodes[i] for i in keep]
            replica.requests = [replica.requests[i] for i in keep]
            replica.arrivals = [replica.arrivals[i] for i in keep]
            replica.place = {pair: i for i, pair in enumerate(zip(replica.nodes, replica.requests, strict=True))}
            self._stale.add(index)

    def settle(self, until: float | None = None) -> None:
        """Simulate every replica to the end of its work, or at least to global time ``until`` (a few steps
        further: the steps are priced in batches); a stale replica from scratch."""
        horizon = None if until is None else until - self.origin
        for index, replica in enumerate(self.replicas):
            if index in self._stale:
                replica.sim = self._simulator()
                self._submit(replica, 0)
            if horizon is None or replica.sim.now < horizon:
                replica.result = replica.sim.run(until=horizon, overshoot_ok=True)
        self._stale.clear()

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
                load = self.ctx.engines[model].load(assignment.option)
                self._start(assignment, start, load + self.ctx.process_start_seconds(model, first_stage=not self.stages))
        nodes = self._stage_nodes(chosen, listed)
        end = self._simulate_stage(nodes)
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

    def _simulate_stage(self, nodes: list[int]) -> float | None:
        """Feed the stage's engines and simulate them until the stage's end is known; returns it (None if no
        node of the stage can finish).

        Each round feeds the engines in feed order, each getting the requests its upstream engines have
        finished by then, and advances them to a horizon: ``STAGE_HORIZON_SECONDS`` after the stage start,
        then twice as far while no node has finished, or to the first finish seen. The end is known once
        it is within the horizon, which every engine has then been simulated to (every step ending by it).
        """
        order = self._engine_order(nodes)
        step = STAGE_HORIZON_SECONDS
        horizon = self.now + step
        while True:
            for engine in order:
                for n in nodes:
                    if self.ctx.node_model[n] == engine.model:
                        self._submit(engine, n)
                engine.settle(until=horizon)
            end = self._first_finish(nodes)
            if end is not None and end <= horizon:
                return end
            if end is None and all(engine.idle() for engine in order):
                return None
            step *= 2
            horizon = self.now + step if end is None else end

    def _submit(self, engine: Engine, n: int) -> None:
        """Queue node ``n``'s requests that can go to ``engine`` now, in arrival order.

        A request that reads a request on ``engine`` goes to that request's replica, whose simulator holds it
        back until that one finishes. Every other request it reads must have a finish time: it arrives at the
        stage start or when the last of those finishes, whichever is later.
        """
        requests = np.flatnonzero(np.isnan(self.done_at[n]) & (self.engine_of[n] < 0))
        arrival = np.full(requests.size, self.now)
        replica = np.full(requests.size, -1)
        ok = np.ones(requests.size, dtype=bool)
        for u in self.ctx.upstream[n]:
            upstream_replica = self.slot_of[u][requests] // _SLOT
            held = (self.engine_of[u][requests] == engine.uid) & ((replica < 0) | (replica == upstream_replica))
            replica[held] = upstream_replica[held]
            times = self._finish_times(u, requests[~held])
            ok[~held] &= ~np.isnan(times)
            arrival[~held] = np.fmax(arrival[~held], times)
        order = np.argsort(arrival[ok], kind="stable")
        chosen = requests[ok][order]
        self.engine_of[n][chosen] = engine.uid
        self.slot_of[n][chosen] = engine.add(n, chosen, arrival[ok][order], replica[ok][order])

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
