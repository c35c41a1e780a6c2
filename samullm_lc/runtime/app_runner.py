"""Run an app graph's requests through a pool: the workload of benchmarks, dry runs and tests.

Each node's request ``i`` gets a token-id prompt of the graph's input length; a downstream request is
submitted the moment its upstream requests have results, with its prompt grown by their output lengths
(the content is synthetic: token ids drawn from ``token_ids``; only the lengths follow the app, see
``SyntheticRequests``). A failed upstream request fails its downstream requests with the cause.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np

from samullm_lc.errors import RequestError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.runtime.requests import GenerationResult, SamplingSpec

Outcome = GenerationResult | RequestError
SYNTHETIC_TOKEN_IDS = np.arange(10, 300)  # ordinary ids in every tiny model's vocabulary (the smallest has 320)
PER_REQUEST_SEED_STRIDE = 1_000_000
"""Sampling seed of request i of the k-th node with ``per_request``: (seed * 16 + k) * this + i."""


def prompt_length(node: LLMNode, i: int, upstream_tokens: int) -> int:
    """Tokens in the prompt of the node's request ``i``: its template, plus its upstream requests' output tokens
    if the node reads them (at least one token)."""
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
        """The prompt and sampling of the node's request ``i``, whose upstream requests generated
        ``upstream_tokens`` tokens in all."""
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
        """Every request of a node at once, given each upstream node's output tokens per request."""
        node = self.app.node(name)
        return [self.request(name, i, sum(upstream_outputs[u][i] for u in node.depends_on))
                for i in range(node.num_requests)]


class AppRun:
    """Submits an app's requests as their upstream requests finish; ``wait`` returns every outcome by node.

    The requests are ``requests``' (by default ``SyntheticRequests`` of ``token_ids``, ``seed`` and
    ``temperature``)."""

    def __init__(self, pool, app: AppGraph, *, token_ids: np.ndarray = SYNTHETIC_TOKEN_IDS, seed: int = 0,
                 temperature: float = 1.0, requests: SyntheticRequests | None = None) -> None:
        self.pool = pool
        self.app = app
        self.requests = requests or SyntheticRequests(app, token_ids=token_ids, seed=seed, temperature=temperature)
        self._lock = threading.Lock()
        self._outcomes: dict[str, list[Outcome | None]] = {n.name: [None] * n.num_requests for n in app.nodes}
        self._missing = sum(n.num_requests for n in app.nodes)
        self._submitted: set[tuple[str, int]] = set()
        self._done = threading.Event()

    def start(self) -> AppRun:
        """Submit every request that waits for nobody."""
        for node in self.app.nodes:
            if not node.depends_on:
                for i in range(node.num_requests):
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
        ready: list[tuple[str, int]] = []
        with self._lock:
            self._outcomes[name][i] = outcome
            self._missing -= 1
            for downstream in self.app.downstream(name):
                upstream = [self._outcomes[u][i] for u in self.app.node(downstream).depends_on]
                if all(o is not None for o in upstream) and (downstream, i) not in self._submitted:
                    self._submitted.add((downstream, i))
                    ready.append((downstream, upstream))  # type: ignore[arg-type]
        for downstream, upstream in ready:
            failed = [o for o in upstream if isinstance(o, RequestError)]
            if failed:
                self._finished_with(downstream, i, RequestError(f"{downstream}[{i}]: upstream failed: {failed[0]}"))
            else:
                self._submit(downstream, i, sum(o.output_tokens for o in upstream))
        if self._missing == 0:
            self._done.set()

    def _finished_with(self, name: str, i: int, error: RequestError) -> None:
        future: Future = Future()
        future.set_exception(error)
        self._finished(name, i, future)
