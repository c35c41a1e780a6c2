"""Reading a real backend's events in a test: wait until one of a kind arrives for an engine."""

import time


def events_until(backend, kind: type, engine_id: int, timeout: float = 180.0) -> list:
    """Backend events until one of ``kind`` for ``engine_id`` arrives (``AssertionError`` after ``timeout``)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.extend(backend.wait(timeout=1.0))
        if any(isinstance(e, kind) and e.engine_id == engine_id for e in seen):
            return seen
    raise AssertionError(f"no {kind.__name__} for engine {engine_id} within {timeout} s: {seen}")
