"""The messages between the pool (``vllm_backend``) and an engine's worker process (``vllm_worker``).

They cross a ``multiprocessing`` pipe, pickled. The pool sends ``StartEngine`` (to a worker whose engine
stopped), ``AddRequests``, ``StopEngine`` and ``ExitWorker``; the worker answers with ``EngineLoaded`` once
per engine, ``RequestsFinished`` as requests finish, then ``EngineStoppedMessage`` or ``EngineFailed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from samullm_lc.runtime.requests import PromptKind


@dataclass(frozen=True, slots=True)
class Pinning:
    """What gives a worker exactly its devices, applied before vLLM and torch load."""

    env: dict[str, str]  # environment variables to set (CUDA_VISIBLE_DEVICES, or the CPU's OpenMP settings)
    cores: list[int] | None = None  # CPU affinity on the CPU engine; None keeps the process's own


# ---- pool -> worker ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request for the engine."""

    request_id: int  # the pool's request id
    kind: PromptKind  # "text", "chat", "tokens" or "openai"
    prompt: Any  # text, chat messages, token ids, or an OpenAI call {"route": ..., "body": ...}
    sampling: dict[str, Any]  # ``vllm.SamplingParams`` keyword arguments (empty for an OpenAI call)


@dataclass(frozen=True, slots=True)
class StartEngine:
    """Start the next engine in this worker (its last one was stopped)."""

    model: str  # the model's name, for error messages
    settings: dict[str, Any]  # ``EngineSettings`` fields
    pinning: Pinning  # the new engine's devices
    log_path: str | None = None  # the file the worker's output goes to (``engine_logs``); None: the terminal


@dataclass(frozen=True, slots=True)
class AddRequests:
    """Requests to add to the running engine."""

    items: list[WorkItem]


@dataclass(frozen=True, slots=True)
class StopEngine:
    """Stop the engine; the worker answers ``EngineStoppedMessage`` and waits for a ``StartEngine``."""


@dataclass(frozen=True, slots=True)
class ExitWorker:
    """End the worker process (it holds no engine)."""


# ---- worker -> pool ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CompletionOutput:
    """One of a finished request's completions."""

    text: str
    num_tokens: int  # tokens generated
    finish_reason: str | None  # "stop", "length", ... as vLLM says


def completion_outputs(output: Any) -> list[CompletionOutput]:
    """The completions of a finished ``vllm.RequestOutput``."""
    return [CompletionOutput(c.text, len(c.token_ids), c.finish_reason) for c in output.outputs]


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """A finished request: its completions, or its error."""

    request_id: int
    completions: list[CompletionOutput] = field(default_factory=list)  # empty if it failed
    prompt_tokens: int = 0  # tokens of the prompt the engine ran (0 if it failed)
    error: str | None = None  # why it failed, or None
    response: str | None = None  # an OpenAI call: the body vLLM's server would answer with (or its error body)


@dataclass(frozen=True, slots=True)
class EngineLoaded:
    """The engine is ready to take requests."""

    load_seconds: float  # from the worker's pinning to ready (vLLM's import included in a fresh process)
    fresh_process: bool  # the worker's first engine (else a stopped engine's worker, with vLLM imported)


@dataclass(frozen=True, slots=True)
class RequestsFinished:
    """Requests that finished in the last engine step, or that vLLM refused when they were added."""

    outcomes: list[RequestOutcome]


@dataclass(frozen=True, slots=True)
class EngineStoppedMessage:
    """The engine stopped as asked; the worker now waits for a ``StartEngine`` or ``ExitWorker``."""

    unfinished: list[int]  # ids of the requests it had not answered (aborted; the pool runs them elsewhere)
    batch_sizes: dict[int, int]  # requests in each engine step's batch -> steps, over the engine's life


@dataclass(frozen=True, slots=True)
class EngineFailed:
    """The engine could not start, or broke; the worker process ends after sending this."""

    error: str  # what failed, with the model's name


ToWorker = StartEngine | AddRequests | StopEngine | ExitWorker
"""Every message the pool sends a worker."""
FromWorker = EngineLoaded | RequestsFinished | EngineStoppedMessage | EngineFailed
"""Every message a worker sends the pool."""
