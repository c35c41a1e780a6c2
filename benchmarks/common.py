"""What the benchmark scripts share: the machine line of a results page, how a page is published, and timing a
run on a machine other jobs share.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they import this
file as ``common``.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUIET_FLAG = Path(os.environ.get("SAMULLM_QUIET_FLAG", "/tmp/samullm_quiet"))  # another job asks for quiet while it exists
IDLE_CORES = 0.3  # the machine counts as idle when other processes use at most this many cores
IDLE_WAIT_SECONDS = 900.0
IDLE_SAMPLE_SECONDS = 3.0
DISTURBED_SHARE = 0.05  # a run during which other processes took more of the machine's CPU time is repeated
MAX_ATTEMPTS = 3


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        if names:
            return names[0]
    return platform.processor() or platform.machine()


def machine(*versions: str) -> str:
    """CPU model, usable cores, Python and the given package versions, load average now (at the start)."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    extra = "".join(f", {v}" for v in versions)
    return (f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}{extra}; "
            f"load average {load} at the start")


def reproduce(command: str) -> list[str]:
    """The closing section of a results page: the command that regenerates it."""
    return ["## Reproduce", "", "```", command, "```", ""]


def publish(text: str, report: Path, *, write: bool = True) -> None:
    """Print a results page and, unless ``write`` is off, write it to ``report`` (under docs/results)."""
    print(text)
    if write:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text)
        print(f"wrote {report.relative_to(ROOT)}")


# ---- interference: other jobs share this machine's cores -------------------------------------------------
def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def wait_until_idle(max_wait: float = IDLE_WAIT_SECONDS) -> float:
    """Wait while another job asks for quiet, then (up to ``max_wait`` seconds) until the cores are idle; the
    cores other processes used at the last check."""
    deadline = time.monotonic() + max_wait
    while True:
        if QUIET_FLAG.exists():
            time.sleep(20.0)
            continue
        busy, own = busy_cpu_seconds(), own_cpu_seconds()
        time.sleep(IDLE_SAMPLE_SECONDS)
        cores_used = ((busy_cpu_seconds() - busy) - (own_cpu_seconds() - own)) / IDLE_SAMPLE_SECONDS
        if cores_used <= IDLE_CORES:
            return cores_used
        if time.monotonic() > deadline:
            print("   the cores did not become idle; measuring anyway", flush=True)
            return cores_used
        print(f"   other processes use {cores_used:.1f} cores; waiting", flush=True)
        time.sleep(20.0)


def measure(label: str, function: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``function`` once the machine is idle; its result and the CPU seconds other processes used meanwhile.

    A run during which other processes took more than ``DISTURBED_SHARE`` of the machine is repeated (up to
    ``MAX_ATTEMPTS`` runs in all; the last one counts).
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        wait_until_idle()
        print(f"-- {label} ...", flush=True)
        started, busy, own = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()
        result = function()
        elapsed = time.perf_counter() - started
        foreign = max(0.0, (busy_cpu_seconds() - busy) - (own_cpu_seconds() - own))
        print(f"-- {label}: {elapsed:.1f} s; other processes used {foreign:.1f} CPU s", flush=True)
        if foreign <= DISTURBED_SHARE * len(os.sched_getaffinity(0)) * elapsed or attempt == MAX_ATTEMPTS:
            return result, foreign
        print("   disturbed by other processes: running it again", flush=True)
    raise AssertionError("unreachable")
