"""The README's main job, as a newcomer runs it: ``make demo`` succeeds, prints a screenful at most (the engines'
own output goes to a log file), and says where its report is."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 40
REPORT_PAGE = Path("results/demo/run.html")
ENGINE_LOG = Path("results/demo/run.log")
VLLM_LOG_LINE = re.compile(r"(INFO|WARNING|DEBUG) \d\d-\d\d \d\d:\d\d:\d\d \[")
"""The head of a vLLM logger line (``INFO 12-04 23:09:58 [core.py:133] ...``)."""


@pytest.mark.engine
@pytest.mark.skipif(os.environ.get("SAMULLM_DOCS_BLOCK") is not None, reason="inside a docs code block")
def test_make_demo_is_short_and_says_where_its_report_is():
    (ROOT / REPORT_PAGE).unlink(missing_ok=True)
    done = subprocess.run(["make", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    lines = output.splitlines()
    assert len(lines) < MAX_LINES, output
    assert not [line for line in lines if VLLM_LOG_LINE.search(line)], output
    assert str(REPORT_PAGE) in output and (ROOT / REPORT_PAGE).stat().st_size > 0
    assert str(ENGINE_LOG) in output and VLLM_LOG_LINE.search((ROOT / ENGINE_LOG).read_text())
