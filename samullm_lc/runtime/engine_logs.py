"""Where the engines' own output goes: a log file whose path is printed, or the terminal when asked (verbose).

Every vLLM engine start prints a hundred lines or more (its config, kernel registrations, torch and NUMA
warnings), from Python and from C++. An engine runs in a process of its own (a pool worker, a profiling
process, a Ray actor), so that process sends its file descriptors 1 and 2 to the log file before vLLM loads:
every line lands in the file, the C++ ones too. The terminal keeps the run's progress and its results.

One run has one ``EngineLog``, opened once (which prints its path) and handed to whatever starts engines for
the run. The default file is new per run, under ``$SAMULLM_CACHE_DIR/logs`` (``~/.cache/samullm_lc/logs``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from samullm_lc import cache
from samullm_lc.user_files import check_writable

LOG_KIND = "logs"


@dataclass(frozen=True, slots=True)
class EngineLog:
    """The engine log of one run: the file its engine processes write to; ``path`` None: the terminal."""

    path: Path | None

    @classmethod
    def open(cls, engine_log: str | Path | None = None, *, verbose: bool = False,
             stream: TextIO | None = None) -> EngineLog:
        """The run's log, its path printed on stderr (or ``stream``): ``engine_log``, emptied if it exists, else
        a new ``engines-YYYYmmdd-HHMMSS-PID.log`` in the logs folder. The file itself is created by the first
        engine that writes. ``verbose``: the terminal. ``ConfigError`` naming the path if it cannot be written."""
        if verbose:
            return cls(None)
        if engine_log is None:
            engine_log = cache.cache_dir(LOG_KIND) / f"engines-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path = check_writable(Path(engine_log), what="engine log")
        if path.exists():
            path.write_bytes(b"")  # this run's lines only
        print(f"engine logs: {path} (verbose shows them here)", file=stream or sys.stderr, flush=True)
        return cls(path)

    @property
    def where(self) -> str:
        """For an error message: where the engines' output can be read."""
        return f"the engine log {self.path}" if self.path is not None else "the engines' output above"


TERMINAL = EngineLog(None)
"""Engine output left on the terminal (``verbose``), or a run without engines (the ``sim`` backend)."""


@contextmanager
def engine_output_to(log: EngineLog) -> Iterator[TextIO]:
    """For an engine run in this process (``samullm profile``): stdout and stderr go to the log inside the block
    and come back after it; yields a stream on the terminal's stderr for the user's messages meanwhile."""
    if log.path is None:
        yield sys.stderr
        return
    saved = [os.dup(1), os.dup(2)]
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    try:
        redirect_output(log.path)
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
    """In an engine's own process: send stdout and stderr (file descriptors 1 and 2) to ``path``, appended, its
    folder created (on a Ray node other than the driver's it may not exist yet). None, or a file that cannot be
    opened there, leaves them where they are: a log must never cost an engine."""
    if path is None:
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        print(f"samullm: cannot write the engine log {path} here ({exc.strerror or exc}); engine output stays "
              "on this process's stdout and stderr", file=sys.stderr, flush=True)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
