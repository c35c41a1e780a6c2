"""Engine output goes to a log file whose path is printed once, or to the terminal when verbose."""

from __future__ import annotations

import subprocess
import sys

import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.runtime import engine_logs
from samullm_lc.runtime.engine_logs import engine_log_path


def test_default_log_is_a_new_file_under_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMULLM_CACHE_DIR", str(tmp_path))
    path = engine_log_path()
    assert path.parent == tmp_path / "logs" and path.name.startswith("engines-") and path.exists()
    assert path.stat().st_mode & 0o077 == 0
    assert engine_log_path(verbose=True) is None
    assert engine_log_path(tmp_path / "mine" / "run.log") == tmp_path / "mine" / "run.log"


def test_a_folder_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give a writable file path for the engine log"):
        engine_log_path(tmp_path)


def test_announced_once_per_file(tmp_path, capsys):
    path = tmp_path / "a.log"
    engine_logs.announce(path)
    engine_logs.announce(path)
    engine_logs.announce(None)
    assert capsys.readouterr().err.count(str(path)) == 1


def test_redirect_catches_what_c_code_writes(tmp_path):
    """An engine process's file descriptors go to the file: C++ writes (torch's, vLLM's kernels') land there too."""
    log = tmp_path / "engine.log"
    code = (f"import os, sys; from samullm_lc.runtime.engine_logs import redirect_output; "
            f"redirect_output({str(log)!r}); print('from python'); sys.stderr.write('to stderr\\n'); "
            "sys.stdout.flush(); os.write(2, b'from C\\n')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "" and done.stderr == ""
    assert log.read_text().splitlines() == ["from python", "to stderr", "from C"]


def test_engine_output_to_gives_the_terminal_back(tmp_path):
    log = tmp_path / "profile.log"
    code = (f"import os; from pathlib import Path; from samullm_lc.runtime.engine_logs import engine_output_to\n"
            f"with engine_output_to(Path({str(log)!r})) as terminal:\n"
            "    os.write(1, b'engine line\\n'); print('progress', file=terminal)\n"
            "print('after')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "after\n"
    assert "progress" in done.stderr and str(log) in done.stderr and "engine line" not in done.stderr
    assert log.read_text() == "engine line\n"
