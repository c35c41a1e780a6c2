"""A durable record of finished requests, so an interrupted run resumes without recomputing them.

Each finished request's result is written to SQLite under its stable key (``requests.content_key`` plus its
occurrence). SQLite in WAL mode keeps every committed transaction through a killed process; the pool
commits once per batch of completions. Failed requests are not recorded: a resumed run tries them again.
Only the pool's driver thread touches the connection.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from samullm_lc.errors import ConfigError
from samullm_lc.runtime.requests import GenerationResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    result TEXT NOT NULL,
    finished_at REAL NOT NULL
)
"""


class Journal:
    """Finished results by key, in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open the journal {self.path}: {exc}; give a writable file path") from exc

    def get(self, key: str) -> GenerationResult | None:
        """The recorded result for ``key``, or None."""
        row = self._db.execute("SELECT result FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return GenerationResult.model_validate_json(row[0]).model_copy(update={"from_journal": True})

    def put_many(self, items: list[tuple[str, GenerationResult]]) -> None:
        """Record finished results in one transaction (a key written twice keeps its first result)."""
        if not items:
            return
        now = time.time()
        rows = [(key, result.model, result.model_dump_json(exclude={"from_journal"}), now) for key, result in items]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        """Close the file (committed results stay)."""
        self._db.close()
