"""One model's placement during a faithful replay: its replicas' continuous-batching simulators.

A placement (one model, one ``Assignment``) lives in the replay (``replay.ExactRun``) from the stage that
starts it until a stage changes or drops it. Requests go to its replicas round-robin as they are submitted,
except that a request reading a request on the same placement goes to that request's replica, whose simulator
holds it back until that one finishes (``ContinuousBatchingSimulator.add_requests``'s ``after``: vertical
fusion). A placement computes nothing before its load time is over. On a scale model (``scale_model.py``) each
replica's engine is the shrunk one. A replica is re-simulated from its start, with the same inputs, only when it
gets a request that arrives before its simulated clock (a node joins a busy placement) or loses requests whose
upstream placement was stopped.

Each request on a placement has a slot code, ``replica * SLOT + place``; ``replica_of`` reads the replica back.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from samullm_lc.costmodel.simulator import ContinuousBatchingSimulator, SimulationResult
from samullm_lc.planner.context import PlanningContext
from samullm_lc.planner.placement import Assignment
from samullm_lc.planner.scale_model import shrunk_engine

EPS = 1e-9
"""Seconds under which two simulated times count as equal."""
SLOT = 1 << 32
"""A request's slot code on a placement is replica * SLOT + its place on that replica."""


@dataclass(slots=True)
class _Replica:
    """One simulated replica and the requests it was given, in order (a request's place is its index)."""

    sim: ContinuousBatchingSimulator
    nodes: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # placement-local seconds, before waiting for upstream
    place: dict[tuple[int, int], int] = field(default_factory=dict)  # (node, request) -> place
    result: SimulationResult | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> _Replica:
        """A copy for a forked run: the lists and dict hold numbers and tuples, so shallow copies will do
        (``copy.deepcopy`` walked every entry); the result is shared, as it is replaced, never changed."""
        clone = _Replica(copy.deepcopy(self.sim, memo), self.nodes.copy(), self.requests.copy(),
                         self.arrivals.copy(), self.place.copy(), self.result)
        memo[id(self)] = clone
        return clone


def replica_of(codes: np.ndarray) -> np.ndarray:
    """The replica index of each slot code."""
    return codes // SLOT


class ReplayedPlacement:
    """One model under one placement in a replay; it computes from ``origin`` (global seconds, load done) on."""

    _uids = itertools.count()

    def __init__(self, ctx: PlanningContext, assignment: Assignment, started: float, load: float) -> None:
        self.uid = next(ReplayedPlacement._uids)
        self.ctx = ctx
        self.assignment = assignment
        self.started = started
        self.load = load
        self.origin = started + load
        options = ctx.model_options[assignment.model]
        self._scheduler, self._latency = shrunk_engine(options.scheduler(assignment.option),
                                                       options.latency(assignment.option), ctx.engine_scale,
                                                       ctx.longest_tokens.get(assignment.model, 1))
        self.replicas = [_Replica(self._simulator()) for _ in range(assignment.option.replicas)]
        self._next = 0  # the replica the next request without a replica of its own goes to
        self._stale: set[int] = set()  # replicas to re-simulate from scratch

    @property
    def model(self) -> str:
        """The model this placement serves."""
        return self.assignment.model

    def cost_objects(self) -> tuple[object, ...]:
        """The limits and latency model its simulators share: a forked run keeps them shared, not copied."""
        return self._scheduler, self._latency

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
            if (local < replica.sim.now - EPS).any():
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
            codes[mask] = index * SLOT + first + np.arange(len(mine))
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
        after: list[list[int]] = [[] for _ in range(nodes.size)]
        for n in np.unique(nodes).tolist():
            where = np.flatnonzero(nodes == n)
            for u, index in work[n].reads:
                for i, r in zip(where.tolist(), index[requests[where]].tolist(), strict=True):
                    if r >= 0 and (u, r) in place:
                        after[i].append(place[u, r])
        replica.sim.add_requests(prompt, output, np.asarray(replica.arrivals[first:]), after)

    def remove(self, doomed: set[int]) -> None:
        """Take requests (slot codes) out again; their replicas are re-simulated without them."""
        for index, replica in enumerate(self.replicas):
            keep = [i for i in range(len(replica.requests)) if index * SLOT + i not in doomed]
            if len(keep) == len(replica.requests):
                continue
            replica.nodes = [replica.nodes[i] for i in keep]
            replica.requests = [replica.requests[i] for i in keep]
            replica.arrivals = [replica.arrivals[i] for i in keep]
            replica.place = {pair: i for i, pair in enumerate(zip(replica.nodes, replica.requests, strict=True))}
            self._stale.add(index)

    def slot_codes(self) -> Iterator[tuple[int, int, int]]:
        """(node, request, slot code) of every request on the placement, after some were removed."""
        for index, replica in enumerate(self.replicas):
            for local, (n, r) in enumerate(zip(replica.nodes, replica.requests, strict=True)):
                yield n, r, index * SLOT + local

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
        replica, local = np.divmod(codes, SLOT)
        for index in np.unique(replica).tolist():
            mask = replica == index
            out[mask] = self.origin + results[index].finish_seconds[local[mask]]
        return out
