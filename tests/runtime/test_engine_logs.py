"""Engine output goes to a log file whose path is printed once per run, or to the terminal when verbose."""

from __future__ import annotations

import subprocess
import sys

import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.runtime.engine_logs import TERMINAL, EngineLog


def test_default_log_is_a_new_file_under_the_cache_root_printed_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMULLM_CACHE_DIR", str(tmp_path))
    log = EngineLog.open()
    assert log.path.parent == tmp_path / "logs" and log.path.name.startswith("engines-")
    assert not log.path.exists()  # created by the first engine that writes: a run without engines leaves none
    assert capsys.readouterr().err == f"engine logs: {log.path} (verbose shows them here)\n"
    assert EngineLog.open(verbose=True) == TERMINAL and capsys.readouterr().err == ""


def test_a_given_log_is_emptied_for_the_new_run(tmp_path):
    old = tmp_path / "run.log"
    old.write_text("the last run's lines\n")
    assert EngineLog.open(old).path == old and old.read_text() == ""


def test_a_folder_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give a writable file path for the engine log"):
        EngineLog.open(tmp_path)


def test_redirect_catches_what_c_code_writes_and_creates_the_folder(tmp_path):
    """An engine process's file descriptors go to the file: C++ writes (torch's, vLLM's kernels') land there too;
    the folder may not exist on a Ray node other than the driver's."""
    log = tmp_path / "node" / "engine.log"
    code = (f"import os, sys; from samullm_lc.runtime.engine_logs import redirect_output; "
            f"redirect_output({str(log)!r}); print('from python'); sys.stderr.write('to stderr\\n'); "
            "sys.stdout.flush(); os.write(2, b'from C\\n')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "" and done.stderr == ""
    assert log.read_text().splitlines() == ["from python", "to stderr", "from C"]


def test_a_log_that_cannot_be_opened_leaves_the_output_where_it_was(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    code = (f"from samullm_lc.runtime.engine_logs import redirect_output; "
            f"redirect_output({str(blocked / 'engine.log')!r}); print('still here')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "still here\n" and "cannot write the engine log" in done.stderr


def test_engine_output_to_gives_the_terminal_back(tmp_path):
    log = tmp_path / "profile.log"
    code = (f"import os; from pathlib import Path; from samullm_lc.runtime.engine_logs import EngineLog, "
            f"engine_output_to\n"
            f"with engine_output_to(EngineLog(Path({str(log)!r}))) as terminal:\n"
            "    os.write(1, b'engine line\\n'); print('progress', file=terminal)\n"
            "print('after')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "after\n" and done.stderr == "progress\n"
    assert log.read_text() == "engine line\n"
