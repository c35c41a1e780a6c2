"""What the LangChain drop-in benchmarks share: step-weighted percentiles of a batch-size histogram, a watch on
the CPU time other processes take during a run, and the machine's quiet check.

``dropin_batching.py``, ``dropin_overhead.py`` and ``dropin_speed.py`` import it as ``dropin_common`` (they run
as ``python benchmarks/NAME.py``, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Self

SERVER_START_LIMIT = 600.0
"""Seconds the servers of a benchmark may take to answer their health check."""


def weighted_percentile(histogram: dict[int, int], q: float) -> int:
    """The batch size at quantile ``q`` (0-1) of the engine steps: ``histogram`` is {batch size: steps}, so
    each step counts once (the step-weighted median is ``q=0.5``)."""
    total = sum(histogram.values())
    if total == 0:
        return 0
    seen = 0
    for size in sorted(histogram):
        seen += histogram[size]
        if seen >= q * total:
            return size
    return max(histogram)


def merge(histograms: list[dict[int, int]]) -> dict[int, int]:
    """The sum of several {batch size: steps} histograms."""
    out: dict[int, int] = {}
    for h in histograms:
        for size, steps in h.items():
            out[int(size)] = out.get(int(size), 0) + int(steps)
    return dict(sorted(out.items()))


# ---- other processes on the machine ------------------------------------------------------------------------
class ForeignCpu:
    """CPU seconds that processes outside this process's tree use while it is open (sampled every second).

    Every process's CPU time is read from ``/proc`` each second; a process that is this one or descends from it
    (engine workers, ``vllm serve`` and its engine core) is ours, any other is foreign. A foreign process that
    starts and ends between two samples is missed.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="foreign-cpu")
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        me = os.getpid()
        parents: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            cpu[pid] = (int(fields[11]) + int(fields[12])) / self._tick
        for pid, seconds in cpu.items():
            chain, p = 0, pid
            while p not in (0, 1, me) and chain < 64:
                p, chain = parents.get(p, 0), chain + 1
            if p == me:
                continue
            self.first.setdefault(pid, seconds)
            self.last[pid] = seconds

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Self:
        self._sample()
        self._baseline = set(self.first)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        """Foreign CPU seconds over the watched interval (a process that started meanwhile counts from 0)."""
        total = 0.0
        for pid, last in self.last.items():
            start = self.first[pid] if pid in self._baseline else 0.0
            total += max(0.0, last - start)
        return total


def wait_for_servers(urls: Iterable[str], t0: float) -> dict[str, float]:
    """Poll each server's ``/health`` until all answer; per URL the seconds since ``t0`` (monotonic) it took."""
    wanted = set(urls)
    ready: dict[str, float] = {}
    while len(ready) < len(wanted):
        for url in wanted - set(ready):
            try:
                with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        ready[url] = time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                pass
        if time.monotonic() - t0 > SERVER_START_LIMIT:
            raise RuntimeError(f"servers not ready after {SERVER_START_LIMIT:.0f} s: ready {sorted(ready)}")
        time.sleep(0.25)
    return ready
