"""The journal keeps finished results across processes and turns every way it can fail into a JournalError."""

import os
import random
import re
import sqlite3
import stat
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from samullm_lc.errors import JournalError
from samullm_lc.runtime.journal import Journal
from samullm_lc.runtime.requests import Completion, GenerationResult

ROOT = Path(__file__).resolve().parents[2]
RESULT = GenerationResult(model="m", prompt_tokens=3, completions=[Completion(text="word " * 40, num_tokens=40)])


def _journal_with_rows(path: Path, rows: int) -> None:
    journal = Journal(path)
    for start in range(0, rows, 1000):
        journal.put_many([(f"key{i:06d}:0", RESULT) for i in range(start, min(rows, start + 1000))])
    journal.close()


def _overwrite(path: Path, offset: int, size: int, seed: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(random.Random(seed).randbytes(size))


def _run_child(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_journal_survives_reopening_and_keeps_the_first_result(tmp_path):
    path = tmp_path / "run.sqlite"
    result = GenerationResult(model="m", prompt_tokens=3, completions=[Completion(text="a b", num_tokens=2)])
    journal = Journal(path)
    journal.put_many([("k:0", result)])
    journal.put_many([("k:0", result.model_copy(update={"prompt_tokens": 99}))])
    journal.close()
    again = Journal(path)
    stored = again.get("k:0")
    assert stored is not None and stored.from_journal and stored.prompt_tokens == 3 and stored.text == "a b"
    assert again.get("k:1") is None and len(again) == 1


def test_journal_in_a_missing_folder_that_cannot_be_made_is_a_journal_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="writable"):
        Journal(blocker / "sub" / "run.sqlite")


def test_a_journal_whose_middle_was_overwritten_is_refused_as_corrupt_when_it_opens(tmp_path):
    path = tmp_path / "run.sqlite"
    _journal_with_rows(path, 3000)
    _overwrite(path, path.stat().st_size // 2, 16 * 1024)
    for _ in range(2):  # a refused open releases the file: the second attempt is refused for the same reason
        with pytest.raises(JournalError, match=rf"{re.escape(str(path))} is corrupt .*move the journal away or delete"):
            Journal(path)


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    pixels = zlib.compress(b"\0\0\0\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", bytes([0, 0, 0, 8, 0, 0, 0, 8, 8, 2, 0, 0, 0])) + \
        chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _sqlite_with(path: Path, ddl: str) -> None:
    db = sqlite3.connect(path)
    db.execute(ddl)
    db.commit()
    db.close()


@pytest.mark.parametrize("kind", ["text", "png", "other tables", "other columns"])
def test_a_file_that_is_not_a_journal_is_named_so_and_left_as_it_is(tmp_path, kind):
    path = tmp_path / "run.sqlite"
    if kind == "text":
        path.write_text("not a database\n" * 100)
    elif kind == "png":
        path.write_bytes(_png())
    elif kind == "other tables":
        _sqlite_with(path, "CREATE TABLE users (id INTEGER, name TEXT)")
    else:
        _sqlite_with(path, "CREATE TABLE results (key TEXT, value BLOB)")
    before = path.read_bytes()
    with pytest.raises(JournalError, match=rf"{re.escape(str(path))} is not a samullm journal"):
        Journal(path)
    assert path.read_bytes() == before


def test_a_row_that_is_not_a_valid_result_fails_alone_and_names_its_key(tmp_path):
    path = tmp_path / "run.sqlite"
    _journal_with_rows(path, 3)
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO results VALUES (?, 'm', ?, 0)", [
        ("not-json:0", '{"model": "m", "completions": ['),
        ("not-a-result:0", '{"model": "m"}'),
        ("a-number:0", 5),
    ])
    db.execute("INSERT INTO results VALUES ('not-utf8:0', 'm', CAST(X'FFFE7B7D' AS TEXT), 0)")
    db.commit()
    db.close()
    journal = Journal(path)
    for key, cause in [("not-json:0", "Invalid JSON"), ("not-a-result:0", "completions: Field required"),
                       ("a-number:0", "result: Input should be an object"), ("not-utf8:0", "UTF-8")]:
        with pytest.raises(JournalError, match=rf"key '{key}' from the journal {re.escape(str(path))} \(.*{cause}"):
            journal.get(key)
    assert journal.get("key000001:0") == RESULT.model_copy(update={"from_journal": True})
    assert len(journal) == 7
    journal.close()


def test_corruption_found_after_opening_fails_reads_with_journal_errors(tmp_path):
    path = tmp_path / "run.sqlite"
    _journal_with_rows(path, 3000)
    journal = Journal(path)
    size = path.stat().st_size
    _overwrite(path, size // 4, size // 2)
    other = sqlite3.connect(path)  # a write by another connection makes the journal drop its page cache
    other.execute("PRAGMA user_version = 1")
    other.close()
    with pytest.raises(JournalError, match=rf"journal {re.escape(str(path))}: it is corrupt .*move the journal away"):
        len(journal)
    failures = 0
    for i in range(3000):
        try:
            journal.get(f"key{i:06d}:0")
        except JournalError as error:
            assert f"key{i:06d}:0" in str(error)
            failures += 1
    assert failures > 0
    journal.close()


def test_a_second_journal_on_a_file_open_in_this_process_is_refused(tmp_path):
    path = tmp_path / "run.sqlite"
    first = Journal(path)
    with pytest.raises(JournalError, match=rf"journal {re.escape(str(path))} is in use by another run"):
        Journal(path)
    first.put_many([("k:0", RESULT)])  # the refused open did not disturb the first
    assert first.get("k:0") is not None
    first.close()
    first.close()
    with pytest.raises(JournalError, match="closed"):
        first.get("k:0")
    again = Journal(path)
    assert len(again) == 1
    again.close()


_HOLD = """
import sys
from samullm_lc.runtime.journal import Journal
from samullm_lc.runtime.requests import Completion, GenerationResult
journal = Journal(sys.argv[1])
result = GenerationResult(model="m", prompt_tokens=3, completions=[Completion(text="a", num_tokens=1)])
journal.put_many([(f"k:{i}", result) for i in range(100)])
print("holding", flush=True)
sys.stdin.readline()
"""


def test_a_journal_held_by_another_process_is_refused_at_once_and_freed_when_it_dies(tmp_path):
    path = tmp_path / "run.sqlite"
    child = _run_child(_HOLD, str(path))
    try:
        assert child.stdout.readline() == "holding\n", child.stderr.read()
        start = time.monotonic()
        with pytest.raises(JournalError, match="in use by another run"):
            Journal(path)
        assert time.monotonic() - start < 1.0
    finally:
        child.kill()  # as a run killed with SIGKILL: the OS releases its lock, its -wal file stays
        child.wait()
    journal = Journal(path)
    assert len(journal) == 100
    journal.close()


def test_a_new_journal_and_its_companions_are_private_and_an_existing_mode_is_kept(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "run.sqlite"
        journal = Journal(path)
        journal.put_many([("k:0", RESULT)])
        modes = {suffix: stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) for suffix in ("", "-wal", "-shm")}
        journal.close()
        assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
        shared = tmp_path / "shared.sqlite"
        Journal(shared).close()
        shared.chmod(0o644)
        Journal(shared).close()
        assert stat.S_IMODE(shared.stat().st_mode) == 0o644
    finally:
        os.umask(old_umask)


# A real write failure: the child may not write past 256 KiB in any file (SIGXFSZ ignored, so write() fails
# with EFBIG, which SQLite reports as a disk I/O error; a full disk, ENOSPC, reads "database or disk is full").
_WRITE_PAST_LIMIT = """
import resource, signal, sys
from samullm_lc.errors import JournalError
from samullm_lc.runtime.journal import Journal
from samullm_lc.runtime.requests import Completion, GenerationResult
result = GenerationResult(model="m", prompt_tokens=3, completions=[Completion(text="word " * 200, num_tokens=200)])
journal = Journal(sys.argv[1])
journal.put_many([("before:0", result)])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
try:
    journal.put_many([(f"big:{i}", result) for i in range(2000)])
    print("written")
except JournalError as error:
    print("JournalError:", error)
print(len(journal), journal.get("before:0") is not None, journal.get("big:1"))
journal.put_many([("after:0", result)])
journal.close()
journal.close()
print("closed")
"""


def test_a_failed_write_is_a_journal_error_and_the_journal_stays_usable(tmp_path):
    path = tmp_path / "run.sqlite"
    out, err = _run_child(_WRITE_PAST_LIMIT, str(path)).communicate(timeout=60)
    lines = out.splitlines()
    assert len(lines) == 3, out + err
    assert lines[0].startswith(f"JournalError: cannot record 2000 results in the journal {path}: disk I/O error")
    assert "check the disk has room" in lines[0]
    assert lines[1:] == ["1 True None", "closed"]
    journal = Journal(path)
    assert len(journal) == 2 and journal.get("after:0") is not None and journal.get("big:1") is None
    journal.close()
