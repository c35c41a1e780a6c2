"""Call sites: which step of the pipeline made each LLM call, from LangChain's own callbacks.

A handler registered once per process with LangChain's configure hook joins every run started while a block is
active (the ContextVar ``_handler`` is set per block). When a chat model or LLM run starts, it notes the run's
step (its tags such as ``seq:step:2`` / ``map:key:a`` / ``branch:1``, and its LangGraph node) in a ContextVar
of the calling context; the call the client then sends is counted under its model and that step, and the
note is cleared when the run ends. Two runs at the same step of a pipeline with the same model (the branches
of a ``RunnableParallel`` have no tag of their own) share a site. The tracing layer builds the app graph
on the same records.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler

STEP_TAG_PREFIXES = ("seq:step:", "map:key:", "branch:", "condition:")
"""LangChain's tags that place a run in its pipeline."""

_handler: contextvars.ContextVar[CallSiteRecorder | None] = contextvars.ContextVar("samullm_sites", default=None)
_site: contextvars.ContextVar[str | None] = contextvars.ContextVar("samullm_call_site", default=None)
_registered = False
_register_lock = threading.Lock()


class CallSiteRecorder(BaseCallbackHandler):
    """Notes the site of each chat model / LLM run as it starts (inline, in the caller's context)."""

    run_inline = True
    raise_error = False

    def on_chat_model_start(self, serialized: dict[str, Any], messages: Any, *, tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        _site.set(step_of(tags, metadata))

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, tags: list[str] | None = None,
                     metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        _site.set(step_of(tags, metadata))

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        _site.set(None)

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        _site.set(None)


def step_of(tags: list[str] | None, metadata: dict[str, Any] | None) -> str:
    """``"[node:NODE] [step tags]"``: where a run sits in its pipeline, from its tags and metadata."""
    steps = sorted({t for t in tags or [] if t.startswith(STEP_TAG_PREFIXES)})
    node = (metadata or {}).get("langgraph_node")
    return " ".join([*([f"node:{node}"] if node else []), *steps])


def current_site(model: str) -> str:
    """The site of the call being sent from this context: the model the client names, and the step of the
    run that is calling (none for a call made outside LangChain's runs)."""
    step = _site.get()
    return f"{model} {step}" if step else model


def register() -> None:
    """Register the handler with LangChain's configure hook, once per process."""
    global _registered
    from langchain_core.tracers.context import register_configure_hook

    with _register_lock:
        if not _registered:
            register_configure_hook(_handler, inheritable=True)
            _registered = True


def activate() -> contextvars.Token:
    """Let runs started in this context (and those it starts) note their sites; ``deactivate`` undoes it."""
    return _handler.set(CallSiteRecorder())


def deactivate(token: contextvars.Token) -> None:
    try:
        _handler.reset(token)
    except ValueError:  # left from another context: the block's own context ends with it
        pass
