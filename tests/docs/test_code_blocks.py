"""Every ``bash`` and ``python`` block of the README and the docs runs, in page order, and exits 0.

One test per markdown file that has a block to run (``docs/contributing.md`` has the convention). Blocks run
from the repository root, each in its own process: ``bash -euo pipefail -c BLOCK``, ``.venv/bin/python -c
BLOCK`` (as ``-c``, so engine processes, started with spawn, never re-import the block), with ``.venv/bin``
first on PATH. Pages marked ``<!-- engine -->`` start real vLLM engines and carry the ``engine`` marker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.docs.markdown_blocks import (
    LOOKALIKE_LANGUAGES,
    ROOT,
    RUN_LANGUAGES,
    CodeBlock,
    code_blocks,
    is_engine_page,
    markdown_files,
    not_run_comments,
)

NESTED = "SAMULLM_DOCS_BLOCK"
"""Set in every block's environment: a block that runs the test suite (``make test``) skips these tests there."""
BLOCK_TIMEOUT_SECONDS = 600
SHOWN_OUTPUT_CHARS = 6000

if os.environ.get(NESTED):
    pytest.skip("inside a docs code block: the blocks are not run again", allow_module_level=True)


def _pages() -> list:
    params = []
    for path in markdown_files():
        if any(block.runs for block in code_blocks(path)):
            marks = [pytest.mark.engine] if is_engine_page(path) else []
            params.append(pytest.param(path, id=str(path.relative_to(ROOT)), marks=marks))
    return params


def _command(block: CodeBlock) -> list[str]:
    if block.language == "bash":
        return ["bash", "-euo", "pipefail", "-c", block.code]
    venv_python = ROOT / ".venv" / "bin" / "python"
    return [str(venv_python if venv_python.exists() else sys.executable), "-c", block.code]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env[NESTED] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    env.pop("PYTHONPATH", None)  # as a reader's shell: the blocks import what the venv installed
    return env


@pytest.mark.parametrize("page", _pages())
def test_page_code_blocks_run(page):
    env = _environment()
    for block in (block for block in code_blocks(page) if block.runs):
        started = time.monotonic()
        try:
            done = subprocess.run(_command(block), check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=BLOCK_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired as exc:
            output = ((exc.stdout or b"") + (exc.stderr or b"")).decode(errors="replace")
            pytest.fail(_failure(block, f"timed out after {BLOCK_TIMEOUT_SECONDS} s", output))
        seconds = time.monotonic() - started
        print(f"{block.where}: {seconds:.1f} s")
        if done.returncode != 0:
            pytest.fail(_failure(block, f"exit code {done.returncode} after {seconds:.1f} s",
                                 done.stdout + done.stderr))


def _failure(block: CodeBlock, what: str, output: str) -> str:
    if len(output) > SHOWN_OUTPUT_CHARS:
        output = "...\n" + output[-SHOWN_OUTPUT_CHARS:]
    return (f"the {block.language} block at {block.where} failed: {what}\n--- block ---\n{block.code}"
            f"--- output ---\n{output}")


def test_not_run_comments_give_a_reason_and_stand_before_a_block():
    problems = []
    for path in markdown_files():
        for comment in not_run_comments(path):
            where = f"{path.relative_to(ROOT)}:{comment.line}"
            if not comment.reason:
                problems.append(f"{where}: say why it is not run: <!-- not run: REASON -->")
            if comment.block is None:
                problems.append(f"{where}: a not-run comment must be the line right before a block")
            elif comment.block.language not in RUN_LANGUAGES:
                problems.append(f"{where}: it stands before a {comment.block.language or 'untagged'} block, which "
                                "is never run anyway; remove the comment")
    assert not problems, "\n".join(problems)


def test_no_block_looks_runnable_without_being_run():
    problems = [
        f"{block.where}: tag {block.language!r} is not run; use bash or python (run), or text (output)"
        for path in markdown_files() for block in code_blocks(path) if block.language in LOOKALIKE_LANGUAGES
    ]
    assert not problems, "\n".join(problems)
