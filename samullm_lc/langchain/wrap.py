"""``wrap(chain)``: a Runnable with the chain's types whose calls run on an engine pool of its own.

For code that takes a Runnable (batch evaluation harnesses): ``fast = samullm.wrap(chain, models=...)``, then
``fast.batch(inputs)``, ``await fast.abatch(inputs)``, ``fast.invoke(x)``. The pool starts at the first call
and serves every later one (so a harness that calls ``invoke`` per example keeps its engines); ``close()``
(or leaving ``with samullm.wrap(...) as fast:``, or the end of the process) stops it. Only the wrapped
chain's own calls (and what they start) are served: other LangChain code of the process is untouched.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self

from langchain_core.runnables import Runnable, RunnableConfig

from samullm_lc.errors import ConfigError
from samullm_lc.langchain.session import OfflineSession, offline
from samullm_lc.runtime.report import RunReport


class PoolRunnable(Runnable):
    """The wrapped chain: same input and output types; every call served by the wrapper's pool."""

    def __init__(self, chain: Runnable, session: OfflineSession) -> None:
        if not isinstance(chain, Runnable):
            raise ConfigError(f"wrap() takes a LangChain Runnable (an LCEL chain or a compiled LangGraph graph), "
                            f"got {type(chain).__name__}")
        self.chain = chain
        self.session = session
        self.name = f"samullm({chain.get_name()})"
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, session.close)  # also runs at interpreter exit

    @property
    def InputType(self) -> Any:  # LangChain's name
        return self.chain.InputType

    @property
    def OutputType(self) -> Any:
        return self.chain.OutputType

    def get_input_schema(self, config: RunnableConfig | None = None) -> Any:
        return self.chain.get_input_schema(config)

    def get_output_schema(self, config: RunnableConfig | None = None) -> Any:
        return self.chain.get_output_schema(config)

    # ---- the pool ------------------------------------------------------------------------------------
    def _open(self) -> OfflineSession:
        """The wrapper's session, its pool started at the first call."""
        with self._lock:
            if not self.session.is_open:
                self.session.open(process_wide=False)
        return self.session

    def _served(self) -> Any:
        return _Active(self._open())

    def report(self) -> RunReport:
        return self.session.report()

    def close(self) -> None:
        """Stop the pool's engines (a later call starts a new pool)."""
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.session.close(cancel=exc_type is not None and not issubclass(exc_type, Exception))

    # ---- calls ---------------------------------------------------------------------------------------
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        with self._served():
            return self.chain.invoke(input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        with self._served():
            return await self.chain.ainvoke(input, config, **kwargs)

    def batch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        with self._served():
            return self.chain.batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        with self._served():
            return await self.chain.abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """Each chunk is produced in a context of its own, so the caller's code between chunks is not served."""
        context = self._served_context()
        chunks = context.run(self.chain.stream, input, config, **kwargs)
        done = object()
        while (chunk := context.run(next, chunks, done)) is not done:
            yield chunk

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
                      ) -> AsyncIterator[Any]:
        context = self._served_context()
        chunks = context.run(self.chain.astream, input, config, **kwargs)

        async def next_chunk() -> Any:
            return await chunks.__anext__()

        while True:
            try:
                chunk = await asyncio.create_task(next_chunk(), context=context)
            except StopAsyncIteration:
                return
            yield chunk

    def _served_context(self) -> contextvars.Context:
        """A copy of the caller's context in which this wrapper's session is active."""
        context = contextvars.copy_context()
        context.run(self._open().activate)
        return context


class _Active:
    """The session active in the calling context for one call."""

    def __init__(self, session: OfflineSession) -> None:
        self.session = session

    def __enter__(self) -> None:
        self.tokens = self.session.activate()

    def __exit__(self, *exc_info: object) -> None:
        self.session.deactivate(self.tokens)


def wrap(chain: Runnable, **options: Any) -> PoolRunnable:
    """``chain`` served by an engine pool of its own; ``options`` are ``offline()``'s (models, devices, ...)."""
    return PoolRunnable(chain, offline(**options))
