"""Call sites: which step of the pipeline made each LLM call, from LangChain's own callbacks.

A handler registered once per process with LangChain's configure hook joins every run started while a block is
active (the ContextVar ``_handler`` is set per block). It keeps the runs in flight with their parents, so when a
chat model or LLM run starts it knows the run's place in the pipeline: the steps (tags such as ``seq:step:2`` /
``map:key:a`` / ``branch:1``, and LangGraph nodes) of every run from the root down to it. It notes that place,
the run, and the pipeline input the root serves in a ContextVar of the calling context (``CallSite``); the call
the client then sends is counted, traced and routed to its app-graph node under that site, and the note is
cleared when the run ends. The same place in a pipeline reached again (a loop, a running summary, each element
of a ``.map()``) is the same site; the same model at two steps is two sites. A LangGraph step counter is not a
place, so ``graph:step:N`` is left out.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

STEP_TAG_PREFIXES = ("seq:step:", "map:key:", "branch:", "condition:")
"""LangChain's tags that place a run in its pipeline."""
INPUT_METADATA_KEY = "samullm_input"
"""Run metadata naming the pipeline input a traced run serves (set by the tracer on each input's config)."""

_handler: contextvars.ContextVar[CallSiteRecorder | None] = contextvars.ContextVar("samullm_sites", default=None)
_site: contextvars.ContextVar[CallSite | None] = contextvars.ContextVar("samullm_call_site", default=None)
_registered = False
_register_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class CallSite:
    """Where an LLM run sits: its steps from the pipeline's root, the run, and the input its root serves (the
    traced input's index, else the root run's id)."""

    steps: str
    run_id: UUID | None
    input: int | UUID | None


@dataclass(frozen=True, slots=True)
class _RunPlace:
    parent: UUID | None
    steps: tuple[str, ...]  # this run's own steps
    node: str | None  # its LangGraph node
    input: int | None


class CallSiteRecorder(BaseCallbackHandler):
    """Keeps the runs in flight with their places and notes each chat model / LLM run's site as it starts (inline,
    in the caller's context)."""

    run_inline = True
    raise_error = False

    def __init__(self, on_root_end: Callable[[UUID], None] | None = None) -> None:
        self._runs: dict[UUID, _RunPlace] = {}
        self._on_root_end = on_root_end  # told when a root run (one pipeline input) ends

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, tags: list[str] | None = None,
                       metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._runs[run_id] = _place(parent_run_id, tags, metadata)

    on_tool_start = on_chain_start
    on_retriever_start = on_chain_start

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._ended(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._ended(run_id)

    def _ended(self, run_id: UUID) -> None:
        place = self._runs.pop(run_id, None)
        if place is not None and place.parent is None and self._on_root_end is not None:
            self._on_root_end(run_id)

    on_tool_end = on_chain_end
    on_tool_error = on_chain_error
    on_retriever_end = on_chain_end
    on_retriever_error = on_chain_error

    def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: Any, *, run_id: UUID,
                            parent_run_id: UUID | None = None, tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        _site.set(self.site_of(run_id, _place(parent_run_id, tags, metadata)))

    def on_llm_start(self, serialized: dict[str, Any] | None, prompts: list[str], *, run_id: UUID,
                     parent_run_id: UUID | None = None, tags: list[str] | None = None,
                     metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        _site.set(self.site_of(run_id, _place(parent_run_id, tags, metadata)))

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        _site.set(None)

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        _site.set(None)

    def site_of(self, run_id: UUID, place: _RunPlace) -> CallSite:
        """The site of a run: the steps of its ancestors, root first, then its own; a LangGraph node once, where
        the run entering it starts (its metadata is inherited by every run inside)."""
        chain = [place]
        root = run_id
        parent = place.parent
        while parent is not None and (above := self._runs.get(parent)) is not None:
            chain.append(above)
            root, parent = parent, above.parent
        steps: list[str] = []
        outer_node = None
        for run in reversed(chain):
            if run.node is not None and run.node != outer_node:
                steps.append(f"node:{run.node}")
                outer_node = run.node
            steps.extend(run.steps)
        return CallSite(steps="/".join(steps), run_id=run_id, input=place.input if place.input is not None else root)


def _place(parent: UUID | None, tags: list[str] | None, metadata: dict[str, Any] | None) -> _RunPlace:
    metadata = metadata or {}
    value = metadata.get(INPUT_METADATA_KEY)
    return _RunPlace(parent=parent, steps=tuple(sorted(t for t in tags or [] if t.startswith(STEP_TAG_PREFIXES))),
                     node=metadata.get("langgraph_node"), input=value if isinstance(value, int) else None)


def current_call() -> CallSite | None:
    """The site of the LLM run calling from this context (None for a call made outside LangChain's runs)."""
    return _site.get()


def site_key(model: str, steps: str) -> str:
    """``"MODEL"`` or ``"MODEL @ STEPS"``: a call site as app graphs and reports name it."""
    return f"{model} @ {steps}" if steps else model


def register() -> None:
    """Register the handler with LangChain's configure hook, once per process."""
    global _registered
    from langchain_core.tracers.context import register_configure_hook

    with _register_lock:
        if not _registered:
            register_configure_hook(_handler, inheritable=True)
            _registered = True


def activate(on_root_end: Callable[[UUID], None] | None = None) -> contextvars.Token:
    """Let runs started in this context (and those it starts) note their sites, ``on_root_end`` told when a root
    run ends; ``deactivate`` undoes it."""
    return _handler.set(CallSiteRecorder(on_root_end))


def deactivate(token: contextvars.Token) -> None:
    try:
        _handler.reset(token)
    except ValueError:  # left from another context: the block's own context ends with it
        pass
