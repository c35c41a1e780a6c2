"""Call sites: which step of the pipeline made each LLM call, from LangChain's own callbacks.

A handler registered once per process with LangChain's configure hook joins every run started while a block is
active (the ContextVar ``_handler`` is set per block). When a chat model or LLM run starts, it notes the run's
site (the model name LangChain reports, the run's step tags such as ``seq:step:2`` / ``map:key:a`` /
``branch:1``, and its LangGraph node) in a ContextVar of the calling context; the call the client then sends
is counted under that site, and the note is cleared when the run ends. The tracing layer builds the app graph
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
        _site.set(site_of(tags, metadata))

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, tags: list[str] | None = None,
                     metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        _site.set(site_of(tags, metadata))

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        _site.set(None)

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        _site.set(None)


def site_of(tags: list[str] | None, metadata: dict[str, Any] | None) -> str:
    """``"MODEL [node:NODE] [step tags]"`` for a run's tags and metadata."""
    metadata = metadata or {}
    steps = sorted({t for t in tags or [] if t.startswith(STEP_TAG_PREFIXES)})
    node = metadata.get("langgraph_node")
    return " ".join([str(metadata.get("ls_model_name") or "?"), *([f"node:{node}"] if node else []), *steps])


def current_site(model: str) -> str:
    """The site of the call being sent from this context (its model's name alone if no run noted one)."""
    site = _site.get()
    return site if site is not None and site.split(" ", 1)[0] in (model, "?") else model


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
