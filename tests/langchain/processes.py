"""Process checks shared by the drop-in's fault and lifecycle tests."""

from __future__ import annotations

import psutil


def alive(pids) -> list[int]:
    """The processes of ``pids`` still running (zombies count as gone)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running
