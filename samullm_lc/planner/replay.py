"""Faithful re-simulation of a plan, stage by stage, with the continuous-batching simulator: the run's stage loop.

Each model's placement is simulated replica by replica (``replicas.ReplayedPlacement``) from the stage that
starts it until a stage changes or drops it. A request of a node is submitted when its node is in the stage
and each request it reads has finished (on any placement) or is on that replica; its prompt already includes
their outputs (``workload.py``). A dropped or changed placement's unfinished requests start again from scratch
on the next placement of that model.

Vertical fusion: when a node and the node it reads run on the same placement, both nodes' requests are
submitted together and the replica's simulator holds each downstream request back until the request it
reads finishes: the downstream request arrives exactly at that finish, on the same replica (the runtime
would send it to the least loaded one).

A stage ends when its first node finishes (a chain of vertically fused nodes counts as one). Placements
are simulated until that end is known, up to horizons that double, not to the end of their work: a
chain of nodes may run long past the stage, and the work would be wasted on a placement the next stage
changes. A placement the next stage keeps continues exactly where it was.

``StageRecord`` is what the run did in each stage; ``StageRecord.choice()`` is that stage as input again
(``StageChoice``), so a run's stages can be replayed elsewhere: on a fork, another output-length sample, or
changed by the preload post-pass (``preload.py``). The output ``Plan`` is built from the records once, at
the end (``api``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from samullm_lc.errors import ConfigError
from samullm_lc.planner.context import PlanningContext
from samullm_lc.planner.placement import Assignment
from samullm_lc.planner.replicas import EPS, ReplayedPlacement, replica_of
from samullm_lc.planner.stages import Group, StageState, reaches, stage_enders, stage_nodes

STAGE_HORIZON_SECONDS = 30.0
"""Simulated seconds a stage's placements are first advanced by while its end is unknown (then twice as far, ...)."""


@dataclass(frozen=True, slots=True)
class StageChoice:
    """A stage to replay: its placements and, per model, the nodes it serves there (none: it only loads)."""

    group: Group
    nodes: dict[str, list[int]]


@dataclass(slots=True)
class EntryRecord:
    """What one model's placement did in one stage."""

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

    def choice(self) -> StageChoice:
        """This stage as a replay's input."""
        return StageChoice(tuple(sorted(e.assignment for e in self.entries)),
                           {e.assignment.model: list(e.nodes) for e in self.entries})


class ExactRun:
    """The faithful state of a plan being replayed: committed finish times and the placements that are up
    (``running``: those up at time 0, loaded)."""

    def __init__(self, ctx: PlanningContext, *, running: dict[str, Assignment] | None = None) -> None:
        self.ctx = ctx
        self.now = 0.0
        nodes = ctx.workload.nodes
        self.done_at = [np.where(n.done, 0.0, np.nan) for n in nodes]
        self.placed_on = [np.full(n.num_requests, -1, dtype=np.int64) for n in nodes]  # uid of its placement
        self.slot_of = [np.full(n.num_requests, -1, dtype=np.int64) for n in nodes]
        self.live: dict[str, ReplayedPlacement] = {}
        self._by_uid: dict[int, ReplayedPlacement] = {}
        self.stages: list[StageRecord] = []
        for assignment in (running or {}).values():
            self._start(assignment, 0.0, 0.0)

    def fork(self) -> ExactRun:
        """An independent copy of this run (simulators included) to continue another way."""
        memo: dict[int, object] = {id(self.ctx): self.ctx}
        for placement in self.live.values():
            memo.update({id(shared): shared for shared in placement.cost_objects()})
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
        """Per node, tokens unfinished requests on live placements have processed by now (outputs interpolated)."""
        progress = np.zeros(self.ctx.num_nodes)
        nodes = self.ctx.workload.nodes
        for placement in self.live.values():
            for replica, result in zip(placement.replicas, placement.results(), strict=True):
                if not replica.requests:
                    continue
                first = placement.origin + result.first_token_seconds
                finish = placement.origin + result.finish_seconds
                started = (first <= self.now) & ~(finish <= self.now)
                if not started.any():
                    continue
                node_ids = np.asarray(replica.nodes)[started]
                request_ids = np.asarray(replica.requests)[started]
                span = np.where(np.isnan(finish[started]), np.inf, np.maximum(finish[started] - first[started], EPS))
                share = np.minimum(1.0, (self.now - first[started]) / span)
                for n in np.unique(node_ids).tolist():
                    mask = node_ids == n
                    r = request_ids[mask]
                    progress[n] += float((nodes[n].prompt[r] + share[mask] * nodes[n].output[r]).sum())
        return progress

    # ---- one stage ---------------------------------------------------------------------------------
    def run_stage(self, group: Group, listed: dict[str, list[int]] | None = None) -> StageRecord:
        """Run ``group`` until its first node finishes; ``listed`` fixes each placement's nodes (replaying a plan)."""
        start = self.now
        chosen = {a.model: a for a in group}
        for model in [m for m, e in self.live.items() if chosen.get(m) != e.assignment]:
            self._stop(model)
        for model, assignment in chosen.items():
            if model not in self.live:
                load = self.ctx.model_options[model].load(assignment.option)
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

    def can_progress(self, stage: StageChoice) -> bool:
        """Whether some request of the stage's listed nodes can run: every request it reads has finished or is
        of a node in the stage. A plan replayed on other lengths (or on a scale model's subsample) can reach a
        stage whose nodes all wait for nodes that finish later there; that stage is skipped (``api``)."""
        nodes = self._stage_nodes({a.model: a for a in stage.group}, stage.nodes)
        member = set(nodes)
        for n in nodes:
            ready = np.isnan(self.done_at[n])
            for u, index in self.ctx.reads[n]:
                if u not in member:
                    has = index >= 0
                    ready &= ~has | ~np.isnan(self.done_at[u][np.where(has, index, 0)])
            if ready.any():
                return True
        return False

    def _stage_nodes(self, chosen: dict[str, Assignment], listed: dict[str, list[int]] | None) -> list[int]:
        unfinished = np.array([np.isnan(d).any() for d in self.done_at])
        if listed is None:
            return stage_nodes(self.ctx, unfinished, set(chosen))
        wanted = {n for model, ns in listed.items() if model in chosen for n in ns}
        nodes = [n for n in range(self.ctx.num_nodes) if n in wanted and unfinished[n]]
        return self._without_unfed_levels(nodes, unfinished)

    def _without_unfed_levels(self, nodes: list[int], unfinished: np.ndarray) -> list[int]:
        """The listed nodes less the levels of a node in a loop (``node_parts.py``) that the stage that planned
        them could not take (as ``stage_nodes``): a plan names the app node, not its levels. A level is left out
        when a node it reads is neither finished nor in the stage, or when it would make two engines feed each
        other; the first level of a node, like every node not in a loop, is taken as listed."""
        ctx = self.ctx
        taken: set[int] = set()
        feeds: dict[str, set[str]] = {}
        for n in nodes:
            first = ctx.app_node_parts(ctx.workload.nodes[n].app_node)[0] == n
            sources = {ctx.node_model[u] for u in ctx.upstream[n] if u in taken} - {ctx.node_model[n]}
            if not first and (any(unfinished[u] and u not in taken for u in ctx.upstream[n])
                              or any(reaches(feeds, ctx.node_model[n], source) for source in sources)):
                continue
            for source in sources:
                feeds.setdefault(source, set()).add(ctx.node_model[n])
            taken.add(n)
        return [n for n in nodes if n in taken]

    def _feed_order(self, nodes: list[int]) -> list[ReplayedPlacement]:
        """Live placements, each after the placements that feed it in this stage."""
        member = set(nodes)
        feeds: dict[str, set[str]] = {m: set() for m in self.live}
        for n in nodes:
            model = self.ctx.node_model[n]
            for u in self.ctx.upstream[n]:
                source = self.ctx.node_model[u]
                if u in member and source != model and source in feeds:
                    feeds[model].add(source)
        order: list[ReplayedPlacement] = []
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
        """Feed the stage's placements and simulate them until the stage's end is known; returns it (None if no
        node of the stage can finish).

        Each round feeds the placements in feed order, each getting the requests its upstream placements have
        finished by then, and advances them to a horizon: ``STAGE_HORIZON_SECONDS`` after the stage start,
        then twice as far while no node has finished, or to the first finish seen. The end is known once
        it is within the horizon, which every placement has then been simulated to (every step ending by it).
        """
        order = self._feed_order(nodes)
        step = STAGE_HORIZON_SECONDS
        horizon = self.now + step
        while True:
            for placement in order:
                for n in nodes:
                    if self.ctx.node_model[n] == placement.model:
                        self._submit(placement, n)
                placement.settle(until=horizon)
            end = self._first_finish(nodes)
            if end is not None and end <= horizon:
                return end
            if end is None and all(placement.idle() for placement in order):
                return None
            step *= 2
            horizon = self.now + step if end is None else end

    def _submit(self, placement: ReplayedPlacement, n: int) -> None:
        """Queue node ``n``'s requests that can go to ``placement`` now, in arrival order.

        A request that reads a request on ``placement`` goes to that request's replica, whose simulator holds it
        back until that one finishes. Every other request it reads must have a finish time: it arrives at the
        stage start or when the last of those finishes, whichever is later.
        """
        requests = np.flatnonzero(np.isnan(self.done_at[n]) & (self.placed_on[n] < 0))
        arrival = np.full(requests.size, self.now)
        replica = np.full(requests.size, -1)
        ok = np.ones(requests.size, dtype=bool)
        for u, index in self.ctx.reads[n]:
            read = index[requests]
            has = read >= 0
            read = np.where(has, read, 0)
            upstream_replica = replica_of(self.slot_of[u][read])
            held = has & (self.placed_on[u][read] == placement.uid) & ((replica < 0) | (replica == upstream_replica))
            replica[held] = upstream_replica[held]
            wait = has & ~held
            times = self._finish_times(u, read[wait])
            ok[wait] &= ~np.isnan(times)
            arrival[wait] = np.fmax(arrival[wait], times)
        order = np.argsort(arrival[ok], kind="stable")
        chosen = requests[ok][order]
        self.placed_on[n][chosen] = placement.uid
        self.slot_of[n][chosen] = placement.add(n, chosen, arrival[ok][order], replica[ok][order])

    def _finish_times(self, node: int, requests: np.ndarray) -> np.ndarray:
        """Finish times (nan if unknown) of ``requests`` of ``node``: committed, or simulated on a live placement."""
        out = self.done_at[node][requests].copy()
        open_ = np.isnan(out)
        if not open_.any():
            return out
        uids = self.placed_on[node][requests]
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
            open_ = np.flatnonzero(np.isnan(self.done_at[n]) & (self.placed_on[n] >= 0))
            if open_.size:
                times = self._finish_times(n, open_)
                hit = ~np.isnan(times) & (times <= end + EPS)
                self.done_at[n][open_[hit]] = times[hit]
        self.now = end
        after = self.finished_nodes()
        entries = []
        for model, assignment in sorted(chosen.items()):
            mine = [n for n in nodes if self.ctx.node_model[n] == model]
            entries.append(EntryRecord(
                assignment=assignment, nodes=mine, load=loads.get(model, 0.0),
                finished=[n for n in mine if n in after and n not in before],
                requests_done={p: int((~np.isnan(self.done_at[p])).sum()) for n in mine
                               for p in self.ctx.app_node_parts(self.ctx.workload.nodes[n].app_node)},
            ))
        return StageRecord(start=start, end=end, entries=entries)

    # ---- placements --------------------------------------------------------------------------------
    def _start(self, assignment: Assignment, started: float, load: float) -> None:
        placement = ReplayedPlacement(self.ctx, assignment, started, load)
        self.live[assignment.model] = placement
        self._by_uid[placement.uid] = placement

    def _stop(self, model: str) -> None:
        """Drop a placement: its unfinished requests lose their progress, and what they fed is taken back."""
        placement = self.live.pop(model)
        lost = {}
        for n in range(self.ctx.num_nodes):
            open_ = (self.placed_on[n] == placement.uid) & np.isnan(self.done_at[n])
            if open_.any():
                self.placed_on[n][open_] = -1
                self.slot_of[n][open_] = -1
                lost[n] = np.flatnonzero(open_)
        for n, requests in lost.items():
            self._withdraw_downstream(n, requests)

    def _withdraw_downstream(self, node: int, requests: np.ndarray) -> None:
        """Requests fed by requests that will not finish as simulated are taken back from their placements."""
        for d in self.ctx.workload.downstream[node]:
            reading = np.zeros(self.ctx.workload.nodes[d].num_requests, dtype=bool)
            for u, index in self.ctx.reads[d]:
                if u == node:
                    reading |= np.isin(index, requests)
            readers = np.flatnonzero(reading)
            queued = readers[(self.placed_on[d][readers] >= 0) & np.isnan(self.done_at[d][readers])]
            if queued.size == 0:
                continue
            touched = set()
            for uid in np.unique(self.placed_on[d][queued]).tolist():
                mask = self.placed_on[d][queued] == uid
                placement = self._by_uid[uid]
                placement.remove(set(self.slot_of[d][queued[mask]].tolist()))
                touched.add(placement)
            self.placed_on[d][queued] = -1
            self.slot_of[d][queued] = -1
            for placement in touched:
                self._reindex(placement)
            self._withdraw_downstream(d, queued)

    def _reindex(self, placement: ReplayedPlacement) -> None:
        """Recompute where each request of ``placement`` sits after some were removed."""
        for n, r, code in placement.slot_codes():
            self.slot_of[n][r] = code
