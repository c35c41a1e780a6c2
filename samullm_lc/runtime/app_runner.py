"""Run an app graph's requests through a pool: the workload of benchmarks, dry runs and tests.

Each node's request ``i`` gets a token-id prompt of the graph's input length; a downstream request is
submitted the moment its upstream requests have results, with its prompt grown by their output lengths
(the content is synthetic: token ids drawn from ``token_ids``; only the lengths follow the app). A failed
upstream request fails its downstream requests with the cause.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np

from samullm_lc.errors import RequestError
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.runtime.requests import GenerationResult, SamplingSpec

Outcome = GenerationResult | RequestError
SYNTHETIC_TOKEN_IDS = np.arange(10, 300)  # ordinary ids in every tiny model's vocabulary (the smallest has 320)


class AppRun:
    """Submits an app's requests as their upstream requests finish; ``wait`` returns every outcome by node."""

    def __init__(self, pool, app: AppGraph, *, token_ids: np.ndarray = SYNTHETIC_TOKEN_IDS, seed: int = 0,
                 temperature: float = 1.0) -> None:
        self.pool = pool
        self.app = app
        self._token_ids = np.asarray(token_ids, dtype=np.int32)
        self._rng = np.random.default_rng(seed)
        self._temperature = temperature
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
        node = self.app.node(name)
        length = int(node.input_tokens[i]) + (upstream_tokens if node.include_upstream_outputs else 0)
        prompt = self._rng.choice(self._token_ids, size=max(length, 1))
        sampling = SamplingSpec(max_tokens=node.max_tokens, temperature=self._temperature)
        future = self.pool.submit(node.model, prompt, sampling=sampling, node=name)
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
