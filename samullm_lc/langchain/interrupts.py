"""Ctrl-C inside an ``offline()`` block: fail the block's outstanding calls at once, then interrupt as before."""

from __future__ import annotations

import signal
import threading
from typing import Any


def on_interrupt(session: Any) -> tuple[Any, Any] | None:
    """Make Ctrl-C fail the block's outstanding calls at once, then interrupt as before. Without it, LangChain's
    ``batch`` would wait for every call in flight (up to ``max_concurrency``) before the interrupt reaches the
    block. Only the main thread can set a signal handler; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)

    def interrupted(signum: int, frame: Any) -> Any:
        if previous == signal.SIG_IGN:  # Ctrl-C was ignored before the block: it still is
            return None
        if session.pool is not None:
            session.pool.cancel()
        if callable(previous):
            return previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    return interrupted, previous


def restore_interrupt(ours: Any, previous: Any) -> None:
    """Put back the handler ``on_interrupt`` replaced, unless someone replaced ours since."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is ours:
        signal.signal(signal.SIGINT, previous)
