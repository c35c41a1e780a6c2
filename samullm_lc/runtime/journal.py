"""A durable record of finished requests, so an interrupted run resumes without recomputing them.

Each finished request's result is written to SQLite under its stable key (``requests.content_key`` plus its
occurrence). SQLite in WAL mode keeps every committed transaction through a killed process; the pool
commits once per batch of completions. Failed requests are not recorded: a resumed run tries them again.
Only the pool's driver thread touches the connection. Every failure leaves as a ``JournalError``.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path

from pydantic import ValidationError

from samullm_lc.errors import JournalError
from samullm_lc.runtime.requests import GenerationResult
from samullm_lc.validated import validation_problems

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    result TEXT NOT NULL,
    finished_at REAL NOT NULL
)
"""
_COLUMNS = [("key", "TEXT"), ("model", "TEXT"), ("result", "TEXT"), ("finished_at", "REAL")]
_START_AFRESH = "move the journal away or delete it to start afresh (its results are then recomputed)"


class Journal:
    """Finished results by key, in one SQLite file that one Journal at a time may hold."""

    def __init__(self, path: str | Path) -> None:
        """Open or create the journal at ``path``: locked, checked for corruption, new files mode 0600.

        Raises ``JournalError`` when the file cannot be opened, is in use by another Journal (in any
        process), is not a samullm journal, or is corrupt.
        """
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Created here, not by SQLite, so the results are private; SQLite gives -wal/-shm the same mode.
            self._lock_fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open the journal {self.path}: {exc.strerror}; give a writable file "
                               "path") from exc
        try:
            # flock, not SQLite's fcntl locks: those are per process, and two pools in one process must clash too.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._check_and_create(self._db)
        except BaseException as exc:
            self.close()
            if isinstance(exc, BlockingIOError):
                raise JournalError(f"the journal {self.path} is in use by another run; wait for that run to end or "
                                   "give this one another journal file") from exc
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise self._error("cannot open the journal", exc) from exc
            raise

    def _check_and_create(self, db: sqlite3.Connection) -> None:
        """Refuse a file that is not a samullm journal or is corrupt; give an empty database the schema."""
        try:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        except sqlite3.DatabaseError as exc:
            if _primary_code(exc) != sqlite3.SQLITE_NOTADB:
                raise
            raise JournalError(f"{self.path} is not a samullm journal (not a SQLite database); give another "
                               "journal path, or move the file away") from exc
        layout = [(r[1], r[2]) for r in db.execute("PRAGMA table_info(results)")]
        if tables and (tables != ["results"] or layout != _COLUMNS):
            found = f"columns {[name for name, _ in layout]}" if tables == ["results"] else f"tables {tables}"
            raise JournalError(f"{self.path} is not a samullm journal (a SQLite database with {found}, not one "
                               "`results` table of key, model, result, finished_at); give another journal path")
        # Reads every page (cost: see docs/runtime.md); a corrupt file found later fails reads, not the open.
        (check,) = db.execute("PRAGMA quick_check(1)").fetchone()
        if check != "ok":
            first = check.removeprefix("*** in database main ***\n").replace("\n", "; ")
            raise JournalError(f"the journal {self.path} is corrupt ({first}); {_START_AFRESH}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)

    def _error(self, what: str, exc: BaseException) -> JournalError:
        """A JournalError for a SQLite or OS failure, with the fix that fits its cause."""
        if _primary_code(exc) == sqlite3.SQLITE_CORRUPT:
            return JournalError(f"{what} {self.path}: it is corrupt ({exc}); {_START_AFRESH}")
        name = getattr(exc, "sqlite_errorname", None)
        code = f" ({name})" if name else ""
        return JournalError(f"{what} {self.path}: {exc}{code}; check the disk has room and the file and its "
                            "folder are writable")

    def get(self, key: str) -> GenerationResult | None:
        """The recorded result for ``key``, or None.

        Raises ``JournalError`` naming the key when the row cannot be read or is not a valid result, so the
        caller can recompute that request.
        """
        try:
            row = self._connection().execute("SELECT result FROM results WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            return GenerationResult.model_validate_json(row[0]).model_copy(update={"from_journal": True})
        except (sqlite3.Error, ValidationError) as exc:
            raise JournalError(f"cannot read the result of key {key!r} from the journal {self.path} ({_cause(exc)}); "
                               f"the stored result is ignored; if this keeps happening, {_START_AFRESH}") from exc

    def put_many(self, items: list[tuple[str, GenerationResult]]) -> None:
        """Record finished results in one transaction (a key written twice keeps its first result).

        Raises ``JournalError`` when the write fails (disk full, I/O error); the batch is then not recorded
        and the journal stays usable for reads and ``close``.
        """
        if not items:
            return
        now = time.time()
        rows = [(key, result.model, result.model_dump_json(exclude={"from_journal"}), now) for key, result in items]
        db = self._connection()
        try:
            db.execute("BEGIN")
            db.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite rolls back itself when it cannot; the write error below is what matters
            raise self._error(f"cannot record {len(rows)} results in the journal", exc) from exc

    def __len__(self) -> int:
        """Results recorded; ``JournalError`` when the file cannot be read."""
        try:
            return int(self._connection().execute("SELECT COUNT(*) FROM results").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._error("cannot count the results of the journal", exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError(f"the journal {self.path} is closed; open a new Journal to use it")
        return self._db

    def close(self) -> None:
        """Close the file and release its lock (committed results stay); closing twice does nothing."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


def _cause(exc: Exception) -> str:
    """One line for a SQLite error or for each problem pydantic found in a stored result."""
    return validation_problems(exc, whole="result") if isinstance(exc, ValidationError) else str(exc)


def _primary_code(exc: BaseException) -> int:
    """SQLite's primary result code of an error (SQLITE_CORRUPT for all its extended codes), 0 if none."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF
