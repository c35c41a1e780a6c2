"""What an engine worker's messages mean to the pool (``worker_messages`` in, backend events out), and back.

Both backends that run real engines read the same worker loop (``vllm_worker``): the process backend over a
pipe, the Ray backend through an actor. This is their one translation: a worker's record of its engine (which
model, which requests it holds) and each message it sends become the ``base`` events the driver handles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from samullm_lc.runtime.backends.base import EngineReady, EngineSpec, EngineStopped, Event, RequestDone
from samullm_lc.runtime.backends.worker_messages import (
    EngineFailed,
    EngineLoaded,
    EngineStoppedMessage,
    FromWorker,
    RequestsFinished,
    WorkItem,
)
from samullm_lc.runtime.requests import Completion, GenerationResult, Request


@dataclass(slots=True)
class EngineInWorker:
    """The pool's record of one engine in a worker: its spec and the requests it holds."""

    spec: EngineSpec
    in_flight: set[int] = field(default_factory=set)
    stopping: bool = False  # the pool asked it to stop
    ready: bool = False  # it finished loading

    def gone(self, failure: str | None, *, permanent: bool = False, node_lost: bool = False) -> EngineStopped:
        """The engine's end, with the requests it had not answered."""
        return EngineStopped(self.spec.engine_id, tuple(sorted(self.in_flight)), failure, permanent=permanent,
                             node_lost=node_lost)


def work_items(requests: list[Request]) -> list[WorkItem]:
    """The pool's requests as the worker takes them."""
    return [WorkItem(r.id, r.kind, r.prompt, {} if r.kind == "openai" else r.sampling.vllm_kwargs())
            for r in requests]


def worker_events(engine: EngineInWorker, message: FromWorker) -> list[Event]:
    """The events one worker message means; the engine's end (stopped or failed) is the last of its events."""
    engine_id = engine.spec.engine_id
    if isinstance(message, EngineLoaded):
        engine.ready = True
        return [EngineReady(engine_id, message.load_seconds, fresh_process=message.fresh_process)]
    if isinstance(message, RequestsFinished):
        events: list[Event] = []
        for outcome in message.outcomes:
            engine.in_flight.discard(outcome.request_id)
            result = None if outcome.error else GenerationResult(
                model=engine.spec.model, prompt_tokens=outcome.prompt_tokens, response=outcome.response,
                completions=[Completion(text=c.text, num_tokens=c.num_tokens, finish_reason=c.finish_reason)
                             for c in outcome.completions],
            )
            events.append(RequestDone(engine_id, outcome.request_id, result, outcome.error))
        return events
    if isinstance(message, EngineStoppedMessage):
        return [engine.gone(None)]
    if isinstance(message, EngineFailed):
        return [engine.gone(message.error)]
    raise TypeError(f"unknown worker message {type(message).__name__}")


def is_end(message: FromWorker) -> bool:
    """Whether the message ends the worker's engine (after it, the worker holds none)."""
    return isinstance(message, (EngineStoppedMessage, EngineFailed))
