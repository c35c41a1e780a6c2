"""The Ray actor that hosts engines on its node: the worker loop of ``vllm_worker`` in a thread, fed in order.

``RayBackend`` creates one ``EngineHost`` per engine it cannot give to an idle host, inside a placement group
that holds the engine's devices on its node. The host runs the same loop as a worker process
(``worker_main``: pin the devices, run ``vllm.LLM`` with vLLM's local executor, serve requests, isolate a
request that breaks a step, wait for the next engine after a stop), talking to it over an in-process pipe.
Ray runs the actor's calls on several threads (so ``receive`` can wait while ``post`` delivers), which does not
keep their order; messages are numbered by the backend and handed to the loop in that order, by a feeder thread
of the host's own (a ``post`` never blocks on a full pipe, so it cannot hold up the ``receive`` that empties the
other direction). A loop that fails outside its engine (pinning) reports ``EngineFailed`` before it ends.

On the CPU engine the plan's devices are cores: device ``d`` is pinned to the ``d % n``-th of the ``n`` cores
the actor's process may use when it starts. On a real node of ``n`` cores that is the device's own core;
on simulated nodes sharing one machine of at least as many cores as the cluster has devices, it keeps engines
of different nodes off each other's cores.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import threading
import traceback

from samullm_lc.runtime.backends.vllm_worker import worker_main
from samullm_lc.runtime.backends.worker_messages import EngineFailed, FromWorker, StartEngine, ToWorker

RECEIVE_SECONDS = 20.0
"""How long one ``receive`` call waits for the loop's next message before answering with none."""


class EngineHost:
    """One engine at a time on this actor's devices (wrapped by ``ray.remote`` in ``ray_backend``)."""

    def __init__(self, first: StartEngine) -> None:
        self._cores = sorted(os.sched_getaffinity(0))  # before any engine pins its thread
        self._conn, loop_end = mp.Pipe()
        self._order = threading.Lock()
        self._next = 0  # number of the next message the loop is to get
        self._held: dict[int, ToWorker] = {}  # messages that came before an earlier-numbered one
        self._outbox: queue.SimpleQueue[ToWorker] = queue.SimpleQueue()  # in order, for the feeder thread
        threading.Thread(target=self._feed, name="samullm-feeder", daemon=True).start()
        self._loop = threading.Thread(target=self._run, args=(loop_end, first), name="samullm-engine", daemon=True)
        self._loop.start()

    def _run(self, conn, first: StartEngine) -> None:  # noqa: ANN001 (a multiprocessing Connection)
        try:
            worker_main(conn, self._on_cores(first))
        except Exception:  # noqa: BLE001 - outside the engine (pinning): the backend must hear why
            conn.send(EngineFailed(f"engine host for {first.model} failed: {traceback.format_exc(limit=3)}"))
        finally:
            conn.close()  # the backend's next receive sees the loop has ended

    def _feed(self) -> None:
        """Hand the loop its messages in order; a send may wait while the loop is busy, ``post`` never does."""
        while True:
            message = self._outbox.get()
            try:
                self._conn.send(self._on_cores(message))
            except (BrokenPipeError, OSError):
                return  # the loop has ended

    def _on_cores(self, message: ToWorker) -> ToWorker:
        """A ``StartEngine`` with its device numbers mapped to this process's cores (CPU engine only)."""
        if not isinstance(message, StartEngine) or message.pinning.cores is None:
            return message
        cores = sorted({self._cores[d % len(self._cores)] for d in message.pinning.cores})
        return dataclasses.replace(message, pinning=dataclasses.replace(message.pinning, cores=cores))

    def post(self, number: int, message: ToWorker) -> None:
        """Hand the loop message ``number``, and every held one that follows it, in number order."""
        with self._order:
            self._held[number] = message
            while self._next in self._held:
                self._outbox.put(self._held.pop(self._next))
                self._next += 1

    def receive(self, timeout: float = RECEIVE_SECONDS) -> list[FromWorker] | None:
        """The loop's messages, waiting up to ``timeout`` seconds for the first; None once the loop has ended."""
        messages: list[FromWorker] = []
        try:
            if not self._conn.poll(timeout):
                return messages
            while self._conn.poll():
                messages.append(self._conn.recv())
        except (EOFError, OSError):
            return messages or None
        return messages

    def node_id(self) -> str:
        """The Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()
