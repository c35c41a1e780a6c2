"""Run an app graph's requests through a pool: the workload of benchmarks, dry runs and tests.

Each node's request ``i`` gets a token-id prompt of the graph's input length; a request is submitted the
moment every request it reads has a result (``AppGraph.request_reads``: by default request i of each upstream
node; a traced graph's router, map-reduce or chained calls say otherwise), with its prompt grown by exactly
their output lengths (the content is synthetic: token ids drawn from ``token_ids``; only the lengths follow
the app, see ``SyntheticRequests``). A failed request fails the requests that read it, with the cause.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from samullm_lc.errors import ConfigError, RequestError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.runtime.requests import GenerationResult, SamplingSpec

Outcome = GenerationResult | RequestError
SYNTHETIC_TOKEN_IDS = np.arange(10, 300)  # ordinary ids in every tiny model's vocabulary (the smallest has 320)
PER_REQUEST_SEED_STRIDE = 1_000_000
"""Sampling seed of request i of the k-th node with ``per_request``: (seed * 16 + k) * this + i."""


def prompt_length(node: LLMNode, i: int, upstream_tokens: int) -> int:
    """Tokens in the prompt of the node's request ``i``: its template, plus the output tokens of the requests it
    reads if the node reads them (at least one token)."""
    return max(1, int(node.input_tokens[i]) + (upstream_tokens if node.include_upstream_outputs else 0))


class SyntheticRequests:
    """Prompt token ids and sampling of an app's requests; lengths from the app graph, ids drawn at random.

    By default one random stream serves the requests in the order they are made. With ``per_request``, the ids
    of request i of a node depend only on (seed, node, i) and each request has a sampling seed of its own, so
    every run sends the same prompts with the same sampling whatever order requests finish in (to compare
    ways of running one app).
    """

    def __init__(self, app: AppGraph, *, token_ids: np.ndarray = SYNTHETIC_TOKEN_IDS, seed: int = 0,
                 temperature: float = 1.0, per_request: bool = False) -> None:
        self.app = app
        self._token_ids = np.asarray(token_ids, dtype=np.int32)
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._temperature = temperature
        self._per_request = per_request
        self._index = {n.name: k for k, n in enumerate(app.nodes)}

    def request(self, name: str, i: int, upstream_tokens: int) -> tuple[np.ndarray, SamplingSpec]:
        """The prompt and sampling of the node's request ``i``, whose read requests generated ``upstream_tokens``
        tokens in all."""
        node = self.app.node(name)
        length = prompt_length(node, i, upstream_tokens)
        if not self._per_request:
            prompt = self._rng.choice(self._token_ids, size=length)
            return prompt, SamplingSpec(max_tokens=node.max_tokens, temperature=self._temperature)
        index = self._index[name]
        rng = np.random.default_rng([self._seed, index, i])
        prompt = self._token_ids[rng.integers(0, len(self._token_ids), size=length)]
        seed = (self._seed * 16 + index) * PER_REQUEST_SEED_STRIDE + i
        return prompt, SamplingSpec(max_tokens=node.max_tokens, temperature=self._temperature, seed=seed)

    def batch(self, name: str, upstream_outputs: dict[str, list[int]]) -> list[tuple[np.ndarray, SamplingSpec]]:
        """Every request of a node at once, given each upstream node's output tokens per request. A chained node
        reads its own outputs, so it cannot be made in one batch (``ConfigError``)."""
        if self.app.node(name).chained:
            raise ConfigError(f"node {name!r} reads its own earlier calls: submit its requests one by one (AppRun)")
        tokens = np.zeros(self.app.node(name).num_requests, dtype=np.int64)
        for upstream, read in self.app.request_reads(name):
            outputs = np.asarray(upstream_outputs[upstream], dtype=np.int64)
            tokens += np.where(read >= 0, outputs[np.maximum(read, 0)], 0)
        return [self.request(name, i, int(t)) for i, t in enumerate(tokens.tolist())]


@dataclass(frozen=True, slots=True)
class ReaderIndex:
    """The requests of one node that read one upstream node (or the node itself, for chained calls), sorted by
    the upstream request they read: ``readers[k]`` reads upstream request ``upstream[k]``. A request that reads
    an upstream request twice is listed twice."""

    node: str
    upstream: np.ndarray  # upstream request indices, ascending
    readers: np.ndarray  # the reading node's request indices, in the same order

    def of(self, j: int) -> np.ndarray:
        """The node's requests that read upstream request ``j``."""
        return self.readers[np.searchsorted(self.upstream, j, "left"):np.searchsorted(self.upstream, j, "right")]


class AppRun:
    """Submits an app's requests as the requests they read finish; ``wait`` returns every outcome by node.

    The requests are ``requests``' (by default ``SyntheticRequests`` of ``token_ids``, ``seed`` and
    ``temperature``). Each is submitted with its node's name, once every request it reads has a result; its
    prompt grows by their output tokens; if one of them failed it fails with the cause instead."""

    def __init__(self, pool, app: AppGraph, *, token_ids: np.ndarray = SYNTHETIC_TOKEN_IDS, seed: int = 0,
                 temperature: float = 1.0, requests: SyntheticRequests | None = None) -> None:
        self.pool = pool
        self.app = app
        self.requests = requests or SyntheticRequests(app, token_ids=token_ids, seed=seed, temperature=temperature)
        self._lock = threading.Lock()
        self._outcomes: dict[str, list[Outcome | None]] = {n.name: [None] * n.num_requests for n in app.nodes}
        self._missing = sum(n.num_requests for n in app.nodes)
        self._reads = {n.name: app.request_reads(n.name) for n in app.nodes}
        # per node and request: how many of the requests it reads have no result yet
        self._unread = {n.name: np.zeros(n.num_requests, dtype=np.int64) for n in app.nodes}
        for name, reads in self._reads.items():
            for _, read in reads:
                self._unread[name] += read >= 0
        self._readers = self._reader_index()
        self._done = threading.Event()
        if self._missing == 0:
            self._done.set()

    def _reader_index(self) -> dict[str, list[ReaderIndex]]:
        """Per upstream node, who reads its requests: reading nodes in declaration order."""
        index: dict[str, list[ReaderIndex]] = {n.name: [] for n in self.app.nodes}
        for node in self.app.nodes:
            for upstream in dict.fromkeys(u for u, _ in self._reads[node.name]):
                reads = [read for u, read in self._reads[node.name] if u == upstream]
                targets = np.concatenate(reads)
                readers = np.concatenate([np.arange(read.size, dtype=np.int64) for read in reads])
                order = np.argsort(targets, kind="stable")
                keep = targets[order] >= 0
                index[upstream].append(ReaderIndex(node.name, targets[order][keep], readers[order][keep]))
        return index

    def start(self) -> AppRun:
        """Submit every request that reads nothing, node by node in request order."""
        for node in self.app.nodes:
            for i in np.flatnonzero(self._unread[node.name] == 0).tolist():
                self._submit(node.name, i, 0)
        return self

    def wait(self, timeout: float | None = None) -> dict[str, list[Outcome]]:
        """Every request's result or error, by node, in request order."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the app {self.app.name!r} did not finish in {timeout} s")
        return self._outcomes  # type: ignore[return-value]

    def _submit(self, name: str, i: int, upstream_tokens: int) -> None:
        prompt, sampling = self.requests.request(name, i, upstream_tokens)
        future = self.pool.submit(self.app.node(name).model, prompt, sampling=sampling, node=name)
        future.add_done_callback(lambda f, name=name, i=i: self._finished(name, i, f))

    def _finished(self, name: str, i: int, future: Future) -> None:
        error = future.exception()
        outcome: Outcome = error if isinstance(error, RequestError) else (
            RequestError(f"{name}[{i}]: {error}") if error is not None else future.result())
        self._settle(name, i, outcome)

    def _settle(self, name: str, i: int, outcome: Outcome) -> None:
        """Record an outcome, then submit (or fail) every request it was the last read of. A failure spreads
        through a loop, not recursion: a chained node's calls fail one after another."""
        settled = deque([(name, i, outcome)])
        while settled:
            name, i, outcome = settled.popleft()
            ready: list[tuple[str, int, list[Outcome]]] = []
            with self._lock:
                self._outcomes[name][i] = outcome
                self._missing -= 1
                for readers in self._readers[name]:
                    unread = self._unread[readers.node]
                    for k in readers.of(i).tolist():
                        unread[k] -= 1
                        if unread[k] == 0:
                            ready.append((readers.node, k, self._read_outcomes(readers.node, k)))
                finished = self._missing == 0
            for downstream, k, read in ready:
                failed = [o for o in read if isinstance(o, RequestError)]
                if failed:
                    settled.append((downstream, k, RequestError(f"{downstream}[{k}]: upstream failed: {failed[0]}")))
                else:
                    self._submit(downstream, k, sum(o.output_tokens for o in read))  # type: ignore[union-attr]
            if finished:
                self._done.set()

    def _read_outcomes(self, name: str, i: int) -> list[Outcome]:
        """The outcomes of the requests the node's request ``i`` reads (all known), one per read."""
        return [self._outcomes[u][int(read[i])] for u, read in self._reads[name] if read[i] >= 0]  # type: ignore[misc]
