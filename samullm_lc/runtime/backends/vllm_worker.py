"""The worker process of a real engine: pin the devices, run ``vllm.LLM`` in-process, serve the pool's pipe.

The process loops: take new requests from its pipe, run one engine step, send back what finished (the pipe
carries the messages of ``worker_messages``). A request vLLM refuses when it is added (a prompt longer than
``max_model_len``, invalid sampling parameters) comes back as that request's error. A request that makes an
engine *step* fail (something vLLM only finds while running it) must not take the others down: the step's
requests are aborted and re-run in halves, apart from everything else, until the one that fails alone is found
(``_Isolation``). It fails with the step's error once a one-token probe shows the engine still works; if the
probe fails too, the engine is broken and the worker reports a fatal error (the pool re-plans, and the
requests run elsewhere).

After its engine is stopped the process waits, with vLLM and torch imported, for the next engine (see
``vllm_backend``); after a failed engine it exits.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter, deque
from multiprocessing.connection import Connection
from typing import Any

from samullm_lc.errors import EngineError
from samullm_lc.runtime.backends.openai_server import OpenAIServer, error_message
from samullm_lc.runtime.backends.worker_messages import (
    AddRequests,
    EngineFailed,
    EngineLoaded,
    EngineStoppedMessage,
    Pinning,
    RequestOutcome,
    RequestsFinished,
    StartEngine,
    StopEngine,
    ToWorker,
    WorkItem,
    completion_outputs,
)
from samullm_lc.runtime.engine_logs import redirect_output
from samullm_lc.runtime.vllm_engine import EngineSettings, apply_offline_defaults

PROBE_TOKEN_IDS = [1]
"""The one-token prompt that checks an engine still works after a request failed a step on its own."""
REIMPORTED_MAIN_EXIT_CODE = 78
"""Exit code of an engine process that found the user's script starting engines as it imported it (EX_CONFIG)."""
REIMPORTED_MAIN_ADVICE = (
    "your script starts samullm engines when it is imported: put that code under `if __name__ == \"__main__\":`. "
    "Each engine runs in a process started with multiprocessing's spawn, which imports the main script first, "
    "so unguarded code would start engines again inside every engine process"
)


def exit_if_reimported_main() -> None:
    """Stop this process if it is an engine process importing the user's main script (see
    ``REIMPORTED_MAIN_ADVICE``): with a message, and an exit code the parent recognises, instead of a hang or
    multiprocessing's traceback about bootstrapping."""
    if getattr(mp.current_process(), "_inheriting", False):
        sys.stderr.write(f"samullm: {REIMPORTED_MAIN_ADVICE}\n")
        sys.exit(REIMPORTED_MAIN_EXIT_CODE)


def cpu_pinning_env(cores: list[int]) -> dict[str, str]:
    """Environment for a CPU engine on ``cores``: one OpenMP thread per core, and vLLM's own binding off
    (two engines each binding "all cores" fight over them and run several times slower)."""
    return {"OMP_NUM_THREADS": str(len(cores)), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def cpu_pinning(cores: list[int]) -> Pinning:
    """The pinning of a CPU engine on ``cores``."""
    return Pinning(env=cpu_pinning_env(cores), cores=list(cores))


def pin_process(pinning: Pinning) -> None:
    """Apply a pinning (environment, CPU affinity) to this process before vLLM and torch load, or again in a
    reused worker (the affinity moves; the OpenMP thread count stays the first engine's)."""
    os.environ.update(pinning.env)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    apply_offline_defaults()
    if pinning.cores:
        os.sched_setaffinity(0, pinning.cores)


def worker_main(conn: Connection, first: StartEngine) -> None:
    """Run engines until told to exit: the ``first`` one, then each one a ``StartEngine`` message names.

    Every failure is reported on ``conn``; after a failed engine the process ends. Ctrl-C is the pool's to
    handle (a terminal sends it to the whole process group): the worker ignores it and is stopped by the pool.
    In a Ray actor (``ray_host``) this runs in a thread of the actor's process, which keeps Ray's own handling.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    redirect_output(first.log_path)
    start, fresh = first, True
    while True:
        if not _run_engine(conn, start, fresh=fresh):
            return
        fresh = False
        try:
            message: ToWorker = conn.recv()
        except EOFError:  # the pool's process is gone
            return
        if not isinstance(message, StartEngine):  # ExitWorker
            return
        start = message


def _run_engine(conn: Connection, start: StartEngine, *, fresh: bool) -> bool:
    """Start one engine (the process's first if ``fresh``) and serve it until the pool stops it; False if it
    failed."""
    pin_process(start.pinning)
    started = time.monotonic()
    try:
        engine = WorkerEngine(EngineSettings(**start.settings))
    except Exception as exc:  # any start failure must reach the pool, which reports it
        conn.send(EngineFailed(f"cannot start the engine for {start.model}: {type(exc).__name__}: {exc}"))
        return False
    conn.send(EngineLoaded(load_seconds=time.monotonic() - started, fresh_process=fresh))
    try:
        engine.serve(conn)
        return True
    except Exception:
        conn.send(EngineFailed(f"engine for {start.model} failed: {traceback.format_exc(limit=3)}"))
        return False
    finally:
        engine.shutdown()


class _Isolation:
    """After a failed step: groups of suspect requests to re-run apart, each until it finishes or fails again.

    A group that fails is split in two and both halves go to the front; a group of one that fails is the
    culprit. Requests arriving meanwhile are held, and join the engine together once no suspect is left,
    so they never share a step with a suspect and the engine's batch is full again right after.
    """

    def __init__(self) -> None:
        self.groups: deque[list[int]] = deque()
        self.running = False  # a suspect group is in the engine now
        self.held: list[WorkItem] = []  # requests that arrived while suspects were being re-run

    @property
    def active(self) -> bool:
        return self.running or bool(self.groups)

    def failed(self, requests: list[int]) -> int | None:
        """The requests of a failed step: the culprit if there is one request, else None (halves queued)."""
        if not requests:
            raise EngineError("an engine step failed with no request in the engine: the engine is broken")
        self.running = False
        if len(requests) == 1:
            return requests[0]
        middle = len(requests) // 2
        self.groups.extendleft([requests[middle:], requests[:middle]])
        return None


class WorkerEngine:
    """The engine inside a worker: adds requests, steps, reports finished ones, isolates failing ones."""

    def __init__(self, settings: EngineSettings) -> None:
        from samullm_lc.runtime.vllm_engine import start_llm

        self.llm = start_llm(settings)
        self.engine = self.llm.llm_engine
        self.tokenizer = self.llm.get_tokenizer()
        self.items: dict[int, WorkItem] = {}  # every request given and not finished, to re-run it if need be
        self.ids: dict[str, int] = {}  # vLLM's external request id (ours, as text) -> ours, while in the engine
        self.internal: dict[str, str] = {}  # external -> the internal id vLLM assigned (for aborts)
        self.isolation = _Isolation()
        self.server: OpenAIServer | None = None  # vLLM's OpenAI serving, made for the first OpenAI call
        self.batch_sizes: Counter[int] = Counter()  # requests in each step's batch -> steps
        self._scheduler = getattr(self.engine.engine_core, "engine_core", None)
        self._scheduler = getattr(self._scheduler, "scheduler", None)  # the in-process engine's scheduler
        self.prepared: dict[int, dict[str, tuple[Any, Any]]] = {}  # OpenAI call -> its engine requests not
        # finished yet (engine id -> engine input and params), to re-run them after a failed step

    def serve(self, conn: Connection) -> None:
        """Step while there is work and no message; take messages in between; return when stopped."""
        while True:
            busy = self.engine.has_unfinished_requests()
            if not busy:
                busy = self._next_after_idle(conn)
            if busy and not conn.poll():
                self._step(conn)
                continue
            message: AddRequests | StopEngine = conn.recv()
            if isinstance(message, StopEngine):
                if self.server is not None:
                    self.server.close()
                    self.server = None
                unfinished = list(self.items)
                if self.internal:
                    self.engine.abort_request(list(self.internal.values()), internal=True)
                conn.send(EngineStoppedMessage(unfinished=unfinished, batch_sizes=dict(self.batch_sizes)))
                return
            for item in message.items:
                self.items[item.request_id] = item
            if self.isolation.active:
                self.isolation.held.extend(message.items)
            else:
                self._send(conn, self._add(message.items))

    def _next_after_idle(self, conn: Connection) -> bool:
        """The engine is idle: start the next suspect group, else the held requests. Whether it is busy now."""
        isolation = self.isolation
        isolation.running = False
        if isolation.groups:
            self._send(conn, self._add([self.items[r] for r in isolation.groups.popleft()]))
            isolation.running = self.engine.has_unfinished_requests()
        elif isolation.held:
            held, isolation.held = isolation.held, []
            self._send(conn, self._add(held))
        return self.engine.has_unfinished_requests()

    @staticmethod
    def _send(conn: Connection, outcomes: list[RequestOutcome]) -> None:
        if outcomes:
            conn.send(RequestsFinished(outcomes))

    def _add(self, items: list[WorkItem]) -> list[RequestOutcome]:
        """Queue requests in the engine; the ones vLLM refuses come back as errors. An OpenAI call goes through
        vLLM's serving code first (``openai_server``), which adds it to the engine or answers it with an error."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        failed = []
        served = False
        for item in items:
            request_id, prompt = item.request_id, item.prompt
            if item.kind == "openai":
                if request_id in self.prepared:  # re-run after a failed step: the serving code already ran
                    for engine_id, (engine_input, params) in list(self.prepared[request_id].items()):
                        self._engine_add(engine_id, engine_input, params)
                else:
                    self._openai_server().start(request_id, prompt)
                    served = True
                continue
            try:
                params = SamplingParams(**item.sampling)
                params.output_kind = RequestOutputKind.FINAL_ONLY
                if item.kind == "chat":
                    prompt = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                elif item.kind == "tokens":
                    prompt = {"prompt_token_ids": [int(t) for t in prompt]}
                self._engine_add(str(request_id), prompt, params)
            except Exception as exc:  # vLLM validates prompts and parameters with several exception types
                self.items.pop(request_id, None)
                failed.append(RequestOutcome(request_id, error=f"{type(exc).__name__}: {exc}"))
        if served:
            self.server.settle()
            failed.extend(self._served_outcomes())
        return failed

    def _engine_add(self, external_id: str, prompt: Any, params: Any) -> None:
        """Add one request to the engine under our id; the OpenAI serving code calls this too, with ids
        ``"ID:K"`` (the K-th prompt of call ID)."""
        self.internal[external_id] = self.engine.add_request(external_id, prompt, params)
        request_id = int(external_id.split(":")[0])
        self.ids[external_id] = request_id
        if self._is_openai(request_id):
            self.prepared.setdefault(request_id, {})[external_id] = (prompt, params)

    def _is_openai(self, request_id: int) -> bool:
        item = self.items.get(request_id)
        return item is not None and item.kind == "openai"

    def _openai_server(self) -> OpenAIServer:
        if self.server is None:
            self.server = OpenAIServer(self.llm, self._engine_add, self._engine_abort)
        return self.server

    def _engine_abort(self, external_id: str) -> None:
        """Take one engine request of an OpenAI call out of the engine (its call no longer wants it)."""
        internal = self.internal.pop(external_id, None)
        self.ids.pop(external_id, None)
        if internal is not None:
            self.engine.abort_request([internal], internal=True)
        request_id = int(external_id.split(":")[0])
        self.prepared.get(request_id, {}).pop(external_id, None)

    def _served_outcomes(self) -> list[RequestOutcome]:
        """The OpenAI calls vLLM's serving code has answered (a response, or the server's error)."""
        outcomes = []
        for result in self.server.finish():
            self.prepared.pop(result.request_id, None)
            if self.items.pop(result.request_id, None) is None:
                continue  # already answered (failed alone after a step failure): report each request once
            error = None if result.status == 200 else error_message(result.body)
            outcomes.append(RequestOutcome(result.request_id, result.completions, result.prompt_tokens, error,
                                           result.body))
        return outcomes

    def _step(self, conn: Connection) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:  # something in the batch broke the step: find it, keep the others
            self._step_failed(conn, exc)
            return
        finished = []
        delivered = False
        if self._scheduler is not None:  # the step's batch: what still runs plus what finished in it
            self.batch_sizes[len(self._scheduler.running) + sum(o.finished for o in outputs)] += 1
        for output in outputs:
            if not output.finished:
                continue
            request_id = self.ids.pop(output.request_id, None)
            if request_id is None:
                continue
            self.internal.pop(output.request_id, None)
            if self._is_openai(request_id):
                self.prepared.get(request_id, {}).pop(output.request_id, None)
                self.server.deliver(output.request_id, output)
                delivered = True
                continue
            if self.items.pop(request_id, None) is None:
                continue  # not ours to report (already answered)
            finished.append(RequestOutcome(request_id, completion_outputs(output),
                                           len(output.prompt_token_ids or ())))
        if delivered:
            finished.extend(self._served_outcomes())
        self._send(conn, finished)

    def _step_failed(self, conn: Connection, error: Exception) -> None:
        """Abort the failed step's requests and re-run them apart; fail the one that fails alone."""
        cause = f"{type(error).__name__}: {error}"
        requests = list(dict.fromkeys(self.ids.values()))
        self._abort_all()
        culprit = self.isolation.failed(requests)
        if culprit is None:
            return
        self._probe(cause)
        self.items.pop(culprit, None)
        if self.prepared.pop(culprit, None) is not None:
            self.server.forget(culprit)
        self._send(conn, [RequestOutcome(culprit, error=f"the engine step failed while running only this request: "
                                                        f"{cause}")])

    def _abort_all(self) -> None:
        """Take every request out of the engine (they stay in ``items``, to be re-run)."""
        if self.internal:
            self.engine.abort_request(list(self.internal.values()), internal=True)
        self.ids.clear()
        self.internal.clear()

    def _probe(self, cause: str) -> None:
        """Run a one-token request; ``EngineError`` if the engine cannot (it is broken, not the request)."""
        from vllm import SamplingParams

        try:
            self.engine.add_request("samullm-probe", {"prompt_token_ids": PROBE_TOKEN_IDS},
                                    SamplingParams(max_tokens=1, temperature=0.0))
            while self.engine.has_unfinished_requests():
                self.engine.step()
        except Exception as exc:
            raise EngineError(f"the engine fails even a one-token request after a step failed ({cause}): "
                              f"{type(exc).__name__}: {exc}") from exc

    def shutdown(self) -> None:
        from samullm_lc.runtime.vllm_engine import shutdown_llm

        if self.server is not None:
            self.server.close()
            self.server = None
        shutdown_llm(self.llm)
