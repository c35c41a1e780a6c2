"""What the pool's client says about the requests still to come, from any thread, for the driver to apply.

Two notices: the client's running count of the requests each app node will make in all (``expect``: the
drop-in counts what its inputs' progress still allows), and that no more requests of the app will come at all
(``finish_intake``: the user's batch call returned). The driver takes them before its inbox each turn, so the
requests a thread submitted before its notice are counted first.
"""

from __future__ import annotations

import threading


class ClientNotices:
    """The notices given since the driver last took them."""

    __slots__ = ("_counts", "_intake_finished", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._intake_finished = False

    def expect(self, counts: dict[str, int]) -> None:
        """The latest count of the requests each named app node will make in all."""
        with self._lock:
            self._counts.update(counts)

    def finish_intake(self) -> None:
        """No more requests of the app will come."""
        with self._lock:
            self._intake_finished = True

    def take(self) -> tuple[dict[str, int], bool]:
        """The counts given since the last take, and whether intake was finished since; both cleared."""
        with self._lock:
            counts, finished = self._counts, self._intake_finished
            self._counts, self._intake_finished = {}, False
        return counts, finished
