"""Where the engines' own output goes: a log file whose path is printed, or the terminal when asked (verbose).

Every vLLM engine start prints a hundred lines or more (its config, kernel registrations, torch and NUMA
warnings), from Python and from C++. An engine runs in a process of its own (a pool worker, a profiling
process, a Ray actor), so that process sends its file descriptors 1 and 2 to the log file before vLLM loads:
every line lands in the file, the C++ ones too. The terminal keeps the run's progress and its results.
The default file is new per run, under ``$SAMULLM_CACHE_DIR/logs`` (``~/.cache/samullm_lc/logs``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from samullm_lc import cache
from samullm_lc.user_files import check_writable

LOG_KIND = "logs"


def engine_log_path(engine_log: str | Path | None = None, *, verbose: bool = False) -> Path | None:
    """The file the engines of one run write to, created empty (checked writable: ``ConfigError`` naming it
    otherwise); None when ``verbose`` (the engines print on the terminal). Without ``engine_log``, a new file
    ``engines-YYYYmmdd-HHMMSS-PID.log`` in the logs folder."""
    if verbose:
        return None
    if engine_log is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        engine_log = cache.cache_dir(LOG_KIND) / f"engines-{stamp}-{os.getpid()}.log"
    path = check_writable(Path(engine_log), what="engine log")
    path.touch(mode=0o600)
    return path


_announced: set[Path] = set()


def announce(path: Path | None, *, stream: TextIO | None = None) -> None:
    """Tell the user where the engines' output goes: one line on stderr (or ``stream``), once per file and
    process; nothing when it is the terminal."""
    if path is not None and path not in _announced:
        _announced.add(path)
        print(f"engine logs: {path} (verbose shows them here)", file=stream or sys.stderr, flush=True)


@contextmanager
def engine_output_to(path: Path | None) -> Iterator[TextIO]:
    """For an engine run in this process (``samullm profile``): stdout and stderr go to ``path`` inside the block
    and come back after it; yields a stream on the terminal's stderr for the user's messages meanwhile."""
    if path is None:
        yield sys.stderr
        return
    saved = [os.dup(1), os.dup(2)]
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    try:
        announce(path, stream=terminal)
        redirect_output(path)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        terminal.close()


def redirect_output(path: str | Path | None) -> None:
    """In an engine's own process: send stdout and stderr (file descriptors 1 and 2) to ``path``, appended.
    None leaves them on the terminal."""
    if path is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
