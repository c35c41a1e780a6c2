"""The request book: every request the pool has taken in and not resolved, one record each, and what the app has
left to do.

A request's whole state lives in its ``RequestRecord`` (as nano-vllm's ``Sequence``): the request, its future,
and where it is (queued, on an engine, resolved). Around the records the book keeps what resolving one must
keep in step: the per-model queues, each app-graph node's progress, the nodes of requests beyond the graph
(``#extra``), the models given up, and a bounded sample of observed output lengths. ``complete`` and ``fail``
update all of it and resolve the future, in one call, exactly once. ``finish_intake`` is told that no more
requests come: each node then expects what it was given (a traced graph may have over-estimated a node's calls),
and the app the planner plans shrinks to match.

Why one book: the planner's ``RunState`` and the app still to plan (``planned_app``) are read from it, and the
driver only glues it to the engines and the report. A pool serving a stream keeps nothing per finished request
beyond the app graph's own bookkeeping: requests beyond the graph are kept only while unfinished, observed
output lengths as a uniform sample of at most ``OBSERVED_LENGTHS_KEPT`` per model.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.errors import RequestError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.runtime.requests import GenerationResult, Request

EXTRA_SUFFIX = "#extra"
"""A model's node of requests beyond the app graph is named ``<model>#extra``."""
OBSERVED_LENGTHS_KEPT = 20_000
"""Observed output lengths kept per model (a uniform sample): plenty to refine a distribution, bounded."""


@dataclass(slots=True)
class RequestRecord:
    """One request taken in and not yet resolved: the request, its future, and where it is."""

    request: Request  # carries its node, index in the node, journal key and attempts (engines it was sent to)
    future: Future
    beyond_app: bool = False  # its node is its model's extra node (the app graph did not announce it)
    engine_id: int | None = None  # the engine it is on; None while it waits in its model's queue
    resolved: bool = False  # its future resolved; the book no longer holds it


@dataclass(slots=True)
class NodeProgress:
    """Requests of one app-graph node: how many were expected and assigned, which finished, their output lengths
    (tokens)."""

    expected: int
    assigned: int = 0
    finished: list[int] = field(default_factory=list)
    output_tokens: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class ExtraNode:
    """Requests for one model beyond the app graph. Only the unfinished ones are kept: the planner plans what is
    left, and a pool serving a stream must not grow with every request it ever served."""

    model: str
    pending: dict[int, int] = field(default_factory=dict)  # request index -> prompt tokens (estimate)
    next_index: int = 0
    max_tokens: int = 0


@dataclass(slots=True)
class ObservedLengths:
    """A uniform sample (reservoir) of one model's observed output lengths (tokens) and whether ``max_tokens``
    cut them, at most ``OBSERVED_LENGTHS_KEPT``."""

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


def shrink_node(app: AppGraph, node: LLMNode, counts: dict[str, int]) -> LLMNode | None:
    """``node`` of ``app`` cut to its first ``counts[node.name]`` requests, each reading only the upstream requests
    left when every node is cut to its count (a node whose count is 0 is gone); None if it has none left."""
    count = counts[node.name]
    if count == node.num_requests and all(counts[u] == app.node(u).num_requests for u in node.depends_on):
        return node
    if count == 0:
        return None
    reads = node.upstream_requests or {u: [[i] for i in range(node.num_requests)] for u in node.depends_on}
    kept = {u: [[j for j in lists[i] if j < counts[u]] for i in range(count)]
            for u, lists in reads.items() if counts[u] > 0}
    return node.model_copy(update={
        "input_tokens": node.input_tokens[:count],
        "inputs": None if node.inputs is None else node.inputs[:count],
        "depends_on": [u for u in node.depends_on if counts[u] > 0],
        "upstream_requests": kept or None,
    })


class RequestBook:
    """The records of outstanding requests, the per-model queues, and the app's progress (driver thread only)."""

    def __init__(self, app: AppGraph | None, models: Iterable[str], *, seed: int = 0) -> None:
        self.app = app
        self._rng = np.random.default_rng(seed)
        self._records: dict[int, RequestRecord] = {}
        self._queues: dict[str, deque[RequestRecord]] = {m: deque() for m in models}
        self._nodes: dict[str, NodeProgress] = {}
        self._nodes_of: defaultdict[str, list[str]] = defaultdict(list)
        self._extras: dict[str, ExtraNode] = {}  # node name -> requests beyond the app graph
        self._observed: defaultdict[str, ObservedLengths] = defaultdict(ObservedLengths)
        self._remaining: Counter[str] = Counter()  # per model: requests expected and not finished yet
        self._outstanding: Counter[str] = Counter()  # per model: requests taken in and not resolved
        self._given_up: dict[str, str] = {}  # model -> why its requests fail
        self._model_of = {node.name: node.model for node in app.nodes} if app is not None else {}
        self._graph_count = {node.name: node.num_requests for node in app.nodes} if app is not None else {}
        for node in app.nodes if app is not None else []:
            self._nodes[node.name] = NodeProgress(expected=node.num_requests)
            self._remaining[node.model] += node.num_requests
            self._nodes_of[node.model].append(node.name)

    # ---- taking requests in ------------------------------------------------------------------------------
    def has_node(self, name: str) -> bool:
        """Whether the app graph has a node of this name."""
        return name in self._nodes

    def register(self, request: Request, future: Future) -> RequestRecord:
        """Take a request in: give it the next free slot of its node (or of its model's first unfilled node; past
        the app graph, a slot of its model's extra node) and a record. It is outstanding, not yet queued."""
        record = RequestRecord(request=request, future=future, beyond_app=not self._assign_node(request))
        self._records[request.id] = record
        self._outstanding[request.model] += 1
        self._queues.setdefault(request.model, deque())
        return record

    def _assign_node(self, request: Request) -> bool:
        """Set the request's node and index; False if it went to its model's extra node."""
        for name in [request.node] if request.node else self._nodes_of[request.model]:
            progress = self._nodes.get(name)
            if progress is not None and progress.assigned < progress.expected:
                request.node, request.index = name, progress.assigned
                progress.assigned += 1
                return True
        name = request.model + EXTRA_SUFFIX
        extra = self._extras.setdefault(name, ExtraNode(model=request.model))
        request.node, request.index = name, extra.next_index
        extra.next_index += 1
        extra.pending[request.index] = request.prompt_length_hint()
        extra.max_tokens = max(extra.max_tokens, request.sampling.max_tokens)
        self._remaining[request.model] += 1
        return False

    def enqueue(self, record: RequestRecord) -> None:
        """Put a registered request at the back of its model's queue."""
        self._queues[record.request.model].append(record)

    def get(self, request_id: int) -> RequestRecord | None:
        """The record of an outstanding request; None once it resolved (or if it never was taken in)."""
        return self._records.get(request_id)

    # ---- queues and engines -----------------------------------------------------------------------------
    def queued(self, model: str) -> int:
        """Requests of ``model`` waiting in its queue."""
        queue = self._queues.get(model)
        return len(queue) if queue is not None else 0

    def queued_models(self) -> list[str]:
        """Models with requests waiting, in the order the book first saw them."""
        return [model for model, queue in self._queues.items() if queue]

    def next_batch(self, model: str, engine_id: int, size: int) -> list[Request]:
        """Take up to ``size`` requests from the front of ``model``'s queue for engine ``engine_id``; each counts
        one more attempt."""
        queue, batch = self._queues[model], []
        while queue and len(batch) < size:
            record = queue.popleft()
            if record.resolved:
                continue
            record.engine_id = engine_id
            record.request.attempts += 1
            batch.append(record.request)
        return batch

    def on_engine(self, request_ids: Iterable[int]) -> list[RequestRecord]:
        """The records, still outstanding, of these request ids (an engine's unfinished requests), in order."""
        return [record for rid in request_ids if (record := self._records.get(rid)) is not None]

    def requeue(self, records: list[RequestRecord]) -> None:
        """Put unresolved requests back at the front of their models' queues, in the given order."""
        for record in reversed(records):
            if not record.resolved:
                record.engine_id = None
                self._queues[record.request.model].appendleft(record)

    @property
    def outstanding(self) -> int:
        """Requests taken in and not resolved."""
        return len(self._records)

    def remaining(self, model: str) -> int:
        """Requests expected of ``model`` that have not finished (app nodes and beyond)."""
        return self._remaining[model]

    def outstanding_of(self, model: str) -> int:
        """Requests of ``model`` taken in and not resolved (queued or on an engine)."""
        return self._outstanding[model]

    # ---- resolving --------------------------------------------------------------------------------------
    def complete(self, record: RequestRecord, result: GenerationResult, *, observe: bool) -> bool:
        """Resolve a request with its result (``observe``: its output lengths came from an engine and join the
        sample). Returns whether its model has now finished everything expected of it; a record already resolved
        is left as it is (False)."""
        if record.resolved:
            return False
        if observe:
            observed = self._observed[record.request.model]
            for completion in result.completions:
                observed.add(completion.num_tokens, completion.finish_reason == "length", self._rng)
        finished = self._resolve(record, result.completions[0].num_tokens if result.completions else 0)
        if not record.future.done():
            record.future.set_result(result)
        return finished

    def fail(self, record: RequestRecord, message: str) -> bool:
        """Resolve a request with a ``RequestError(message)``. Returns whether its model has now finished
        everything expected of it; a record already resolved is left as it is (False)."""
        if record.resolved:
            return False
        finished = self._resolve(record, 0)
        if not record.future.done():
            record.future.set_exception(RequestError(message))
        return finished

    def abandon(self, record: RequestRecord, message: str) -> None:
        """Drop a record and fail its future without touching the rest (the bookkeeping itself is broken)."""
        self._records.pop(record.request.id, None)
        record.resolved = True
        if not record.future.done():
            record.future.set_exception(RequestError(message))

    def _resolve(self, record: RequestRecord, output_tokens: int) -> bool:
        request = record.request
        if self._records.pop(request.id, None) is not None:
            self._outstanding[request.model] -= 1
        record.resolved = True
        extra = self._extras.get(request.node)
        if extra is not None:
            extra.pending.pop(request.index, None)
        else:
            progress = self._nodes[request.node]
            progress.finished.append(request.index)
            progress.output_tokens[request.index] = max(1, output_tokens)
        self._remaining[request.model] -= 1
        return self._remaining[request.model] <= 0 and self._outstanding[request.model] == 0

    def finish_intake(self) -> Counter[str]:
        """No more requests come: every node now expects only the requests it was assigned, so a node the app
        graph over-estimated no longer waits for calls that never come (later requests go beyond the graph).
        Returns, per model, how many requests are no longer expected."""
        dropped: Counter[str] = Counter()
        for name, progress in self._nodes.items():
            if progress.assigned < progress.expected:
                dropped[self._model_of[name]] += progress.expected - progress.assigned
                progress.expected = progress.assigned
        self._remaining.subtract(dropped)
        return dropped

    def expect(self, counts: dict[str, int]) -> tuple[Counter[str], list[str]]:
        """The client's running count of the requests each app node will make in all (e.g. from its inputs'
        progress): each node now expects that many, at least what it was assigned and at most what the graph
        holds (more go beyond the graph). Returns, per model, how many fewer requests are expected (negative:
        more), and the nodes this completed (every request they will make has finished)."""
        fewer: Counter[str] = Counter()
        completed: list[str] = []
        for name, count in counts.items():
            progress = self._nodes.get(name)
            if progress is None:
                continue
            expected = min(max(int(count), progress.assigned), self._graph_count[name])
            if expected == progress.expected:
                continue
            fewer[self._model_of[name]] += progress.expected - expected
            progress.expected = expected
            if len(progress.finished) >= expected:
                completed.append(name)
        self._remaining.subtract(fewer)
        return fewer, completed

    def assigned_counts(self, models: Iterable[str]) -> dict[str, int]:
        """Per app node of ``models``, the requests it was given so far."""
        wanted = set(models)
        return {name: progress.assigned for name, progress in self._nodes.items() if self._model_of[name] in wanted}

    def take_all(self) -> list[RequestRecord]:
        """Empty every queue and return every outstanding record (to fail them all)."""
        for queue in self._queues.values():
            queue.clear()
        return list(self._records.values())

    def give_up(self, model: str, message: str) -> list[RequestRecord]:
        """Abandon a model: nothing more is expected of it, its requests still to come fail with ``message``, and
        the queued ones are returned (taken off the queue) for the caller to fail."""
        self._given_up[model] = message
        self._remaining[model] = 0
        queue = self._queues.setdefault(model, deque())
        queued = list(queue)
        queue.clear()
        return queued

    def given_up(self, model: str) -> str | None:
        """Why ``model``'s requests fail, if it was given up."""
        return self._given_up.get(model)

    @property
    def given_up_models(self) -> frozenset[str]:
        """The models given up."""
        return frozenset(self._given_up)

    # ---- what the planner reads -------------------------------------------------------------------------
    def planned_app(self) -> AppGraph | None:
        """What the planner plans: the app graph plus, per model, a node of the unfinished requests beyond it;
        None if there is neither. Nodes of given-up models, and the nodes that read them, are left out: their
        requests fail or never come. After ``finish_intake`` each node keeps only its first requests, as many as
        it was assigned (the book numbers a node's requests in arrival order)."""
        app = self.app
        nodes: list[LLMNode] = []
        if app is not None:
            counts = {name: progress.expected for name, progress in self._nodes.items()}
            dropped: set[str] = set()
            for name in app.topological_order:  # upstream first, so a drop reaches every reader
                node = app.node(name)
                if node.model in self._given_up or dropped.intersection(node.depends_on):
                    dropped.add(name)
            nodes = [shrunk for n in app.nodes if n.name not in dropped
                     and (shrunk := shrink_node(app, n, counts)) is not None]
        for name, extra in self._extras.items():
            if extra.pending and extra.model not in self._given_up:
                nodes.append(LLMNode(name=name, model=extra.model, input_tokens=list(extra.pending.values()),
                                     max_tokens=extra.max_tokens))
        if not nodes:
            return None
        return AppGraph(name=app.name if app else "pool", nodes=nodes, num_inputs=app.num_inputs if app else None)

    def node_progress(self, planned: set[str]) -> tuple[dict[str, list[int]], dict[str, dict[int, int]]]:
        """For the planner's ``RunState``: per planned app node, the finished request indices and their output
        tokens."""
        finished = {name: sorted(p.finished) for name, p in self._nodes.items() if p.finished and name in planned}
        outputs = {name: dict(p.output_tokens) for name, p in self._nodes.items()
                   if p.output_tokens and name in planned}
        return finished, outputs

    def refined_lengths(self, models: Iterable[str], base: Callable[[str], OutputLengthDistribution]
                        ) -> dict[str, OutputLengthDistribution]:
        """For the planner's ``RunState``: per model with observations, ``base(model)`` refined by them."""
        wanted = set(models)
        return {model: base(model).refined(np.asarray(observed.tokens), censored=np.asarray(observed.cut))
                for model, observed in self._observed.items() if model in wanted and observed.tokens}

    def observed_count(self, model: str) -> int:
        """Output lengths of ``model`` observed so far (the sample keeps at most ``OBSERVED_LENGTHS_KEPT``)."""
        observed = self._observed.get(model)
        return observed.seen if observed is not None else 0


__all__ = ["EXTRA_SUFFIX", "OBSERVED_LENGTHS_KEPT", "ObservedLengths", "RequestBook", "RequestRecord"]
