"""Faults and bad input inside the LangChain drop-in (issue acceptance 5), on the real vLLM CPU engine.

Every client points at ``http://127.0.0.1:9/v1`` (port 9 is closed): a call that escaped interception would fail
with a connection error, and ``no_network`` records any connection attempt this process makes.
One ``offline()`` block serves the in-process tests of this module (an engine start costs seconds); a killed
script, a resumed journal and Ctrl-C run in subprocesses.

Run under ``flock /tmp/samullm-engine.lock`` (one engine-running job at a time on the shared machine).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda, RunnableParallel
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from processes import alive

import samullm_lc as samullm
from samullm_lc.errors import ConfigError, JournalError, SamullmError
from samullm_lc.langchain.session import active_session

pytestmark = pytest.mark.timeout(300)
engine = pytest.mark.engine
MODEL = "tiny-llama-s"
CLOSED = "http://127.0.0.1:9/v1"
ROOT = Path(__file__).resolve().parents[2]


def chat(model: str = MODEL, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=CLOSED, api_key="EMPTY", **{"temperature": 0, "max_tokens": 8, **kwargs})


@pytest.fixture(scope="module")
def run():
    """One block for the module's in-process tests (tiny-llama-s on this machine's cores)."""
    with samullm.offline(models=[MODEL], progress=False, trace=False) as session:  # many chains: none traced
        yield session


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every TCP connection this process attempts (none may happen inside a block)."""
    attempts: list = []
    original = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    assert not attempts, f"connections attempted from inside a block: {attempts}"


def _record(run) -> dict:
    (record,) = [m for m in run.report().models if m.model == MODEL]
    return record.model_dump()


# ---- bad settings of the block itself -----------------------------------------------------------------------
SIM = {"backend": "sim", "devices": "8xA100-80GB", "models": ["Llama-2-7b-hf"], "progress": False}


@pytest.mark.parametrize(("settings", "words"), [
    ({"models": "tiny-llama-s"}, r"write models=\['tiny-llama-s'\]"),
    ({"models": []}, "models is empty"),
    ({"models": [MODEL], "max_concurrency": 0}, "max_concurrency must be a positive integer"),
    ({"models": [MODEL], "devices": "2xNotAGPU"}, "unknown hardware 'NotAGPU'"),
    ({"models": ["no-such-model-xyz"]}, "'no-such-model-xyz' is not a local folder, and samullm_lc never downloads"),
])
def test_bad_block_settings_fail_at_once_naming_the_fix_and_leave_no_block_open(settings, words):
    children = _children()
    with pytest.raises(ConfigError, match=words), samullm.offline(progress=False, **settings):
        pytest.fail("the block was entered")
    assert active_session() is None and _children() == children


def test_a_journal_path_that_is_not_a_journal_fails_at_once_and_leaves_no_block_open(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a journal")
    with pytest.raises(JournalError, match="notes.txt is not a samullm journal"), samullm.offline(journal=notes, **SIM):
        pytest.fail("the block was entered")
    assert active_session() is None and notes.read_text() == "not a journal"


def _children() -> set[int]:
    import psutil

    return {c.pid for c in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(c.cmdline())}


# ---- 1. user code raising for one input ---------------------------------------------------------------------
@engine
def test_user_code_raising_for_one_input_fails_that_input_alone(run):
    n, bad = 24, 7

    def check(x: dict) -> dict:
        if x["i"] == bad:
            raise ValueError(f"user code refused input {bad}")
        return x

    # each input's prompt is longer than the last, so its answer's prompt-token count tells which input it answers
    chain = RunnableLambda(check) | RunnableParallel(
        i=lambda x: x["i"], answer=(lambda x: "word " * (x["i"] + 1)) | chat())
    inputs = [{"i": i} for i in range(n)]
    before = _record(run)
    results = chain.batch(inputs, return_exceptions=True)
    assert len(results) == n
    assert isinstance(results[bad], ValueError) and str(results[bad]) == f"user code refused input {bad}"
    good = [r for i, r in enumerate(results) if i != bad]
    assert [r["i"] for r in good] == [i for i in range(n) if i != bad]
    assert all(isinstance(r["answer"], AIMessage) and r["answer"].content for r in good)
    tokens = [r["answer"].usage_metadata["input_tokens"] for r in good]
    assert tokens == sorted(tokens) and len(set(tokens)) == n - 1, tokens  # in input order, one answer per input
    after = _record(run)
    assert after["requests_done"] - before["requests_done"] == n - 1  # the failing input sent nothing

    asynchronous = asyncio.run(chain.abatch(inputs, return_exceptions=True))
    assert isinstance(asynchronous[bad], ValueError)
    assert [r["answer"].content for i, r in enumerate(asynchronous) if i != bad] == [r["answer"].content for r in good]
    assert [r["answer"].usage_metadata["input_tokens"] for i, r in enumerate(asynchronous) if i != bad] == tokens

    with pytest.raises(ValueError, match=f"user code refused input {bad}"):
        chain.batch(inputs)  # LangChain's own behaviour without return_exceptions
    with pytest.raises(ValueError, match=f"user code refused input {bad}"):
        asyncio.run(chain.abatch(inputs))
    assert chain.invoke({"i": 0})["answer"].content  # the block still serves


# ---- 2. a prompt longer than the context --------------------------------------------------------------------
@engine
def test_a_prompt_longer_than_the_context_fails_alone_with_the_engines_reason(run):
    n, long = 12, 5
    texts = [f"short question {i}" for i in range(n)]
    texts[long] = "x " * 1600  # 3,200 bytes: over the tiny models' 2,048-token context (byte-level tokenizer)
    before = _record(run)
    results = chat().batch(texts, return_exceptions=True)
    assert isinstance(results[long], openai.BadRequestError), results[long]
    assert "maximum context length" in str(results[long]) and "2048" in str(results[long])
    assert all(isinstance(r, AIMessage) and r.content for i, r in enumerate(results) if i != long)
    after = _record(run)
    assert after["requests_done"] - before["requests_done"] == n - 1
    assert after["requests_failed"] - before["requests_failed"] == 1
    assert not run.report().engine_failures  # a refused prompt does not take an engine down


# ---- 3. a model the block does not serve --------------------------------------------------------------------
@engine
def test_an_unknown_model_names_the_model_and_the_fix_and_starts_nothing(run):
    with pytest.raises(openai.NotFoundError) as caught:
        chat("tiny-llama-m").invoke("hello")
    message = str(caught.value)
    assert "'tiny-llama-m'" in message and "offline(models=" in message and "'tiny-llama-m':" in message
    assert "tiny-llama-s" in message  # what the block does serve
    report = run.report()
    assert {m.model for m in report.models} == {MODEL}
    assert all(e.model == MODEL for e in report.engines)
    assert "tiny-llama-m" not in report.call_sites and not any("tiny-llama-m" in s for s in report.call_sites)


def test_an_unknown_model_without_a_models_mapping_starts_no_pool():
    with samullm.offline(progress=False) as session:
        with pytest.raises(openai.NotFoundError) as caught:
            chat("gpt-4o-mini", max_retries=0).invoke("hello")
        assert session.pool is None
    message = str(caught.value)
    assert "'gpt-4o-mini'" in message and "offline(models={'gpt-4o-mini':" in message
    report = session.report()
    assert report.models == [] and report.engines == [] and report.requests_done == 0


# ---- 4. parameters the engine cannot take -------------------------------------------------------------------
@tool
def lookup(city: str) -> str:
    """Look up the weather of a city."""
    return "sunny"


TOOL_PARSER_NEEDED = r"tool_parser|tool-call-parser"  # the block's words (offline(tool_parser=...)) or vLLM's


@engine
def test_tool_calls_without_a_tool_parser_fail_that_call_with_a_clear_error(run):
    before = _record(run)
    bound = chat().bind_tools([lookup], tool_choice="auto")
    with pytest.raises(openai.BadRequestError, match=TOOL_PARSER_NEEDED):
        bound.invoke("What is the weather in Paris?")
    with pytest.raises(openai.BadRequestError, match=TOOL_PARSER_NEEDED):
        chat().bind_tools([lookup], tool_choice="lookup").invoke("What is the weather in Paris?")
    assert chat().invoke("still served").content  # the others go on
    assert _record(run)["requests_done"] - before["requests_done"] == 1


@engine
@pytest.mark.parametrize(("settings", "words"), [
    ({"n": 2, "temperature": 0}, "n must be 1 when using greedy sampling"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"extra_body": {"top_k": -5}}, "top_k"),
])
def test_invalid_sampling_fails_with_the_servers_message(run, settings, words):
    results = chat(**settings).batch(["bad settings", "bad settings again"], return_exceptions=True)
    assert all(isinstance(r, openai.BadRequestError) for r in results), results
    assert all(words in str(r) for r in results), [str(r) for r in results]
    assert chat().invoke("good settings").content
    assert not run.report().engine_failures


def test_chat_samullm_bind_tools_says_tools_are_not_supported():
    with pytest.raises(NotImplementedError, match="does not support tool calls"):
        samullm.ChatSamullm(model=MODEL).bind_tools([lookup])


@engine
def test_chat_samullm_given_tools_at_call_time_fails_with_a_clear_error(run):
    with pytest.raises(SamullmError, match="tool calls are not supported"):
        samullm.ChatSamullm(model=MODEL, max_tokens=4).invoke("hi", tools=[{"type": "function", "function": {
            "name": "lookup", "parameters": {"type": "object", "properties": {}}}}])


# ---- 5. an engine process killed mid-batch ------------------------------------------------------------------
@engine
def test_an_engine_killed_mid_batch_loses_no_result_and_the_report_says_so(run):
    n = 48
    llm = chat(max_tokens=16, extra_body={"ignore_eos": True})
    inputs = [f"prompt {i} " + "word " * i for i in range(n)]
    undisturbed = llm.batch(inputs)
    before = _record(run)
    killed: list[int] = []

    def kill_one_engine() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = _record(run)
            if record["requests_submitted"] - before["requests_submitted"] >= n // 2 and \
                    record["requests_done"] - before["requests_done"] < n:
                pids = run.pool.backend.pids()
                if pids:
                    pid = min(pids.values())
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.002)

    killer = threading.Thread(target=kill_one_engine)
    killer.start()
    disturbed = llm.batch(inputs)
    killer.join()
    assert killed, "no engine was killed while the batch ran"
    after = _record(run)
    assert len(disturbed) == n
    assert [m.content for m in disturbed] == [m.content for m in undisturbed]
    assert [m.usage_metadata for m in disturbed] == [m.usage_metadata for m in undisturbed]
    assert after["requests_done"] - before["requests_done"] == n  # each input answered exactly once
    assert after["requests_failed"] == before["requests_failed"]
    report = run.report()
    assert any(str(killed[0]) in f for f in report.engine_failures), report.engine_failures


# ---- 6. the script SIGKILLed, rerun on its journal ----------------------------------------------------------
_JOURNALLED = textwrap.dedent("""
    import json, sys, time
    import samullm_lc as samullm
    from langchain_core.runnables import RunnableLambda
    from langchain_openai import ChatOpenAI

    if __name__ == "__main__":
        journal, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        llm = ChatOpenAI(model="tiny-llama-s", base_url="http://127.0.0.1:9/v1", api_key="EMPTY", temperature=0,
                         max_tokens=16)

        def ask(i):
            time.sleep(0.25)  # user code between calls, so the run is killed part-way
            return llm.invoke(f"question {i}: " + "word " * i)

        with samullm.offline(models=["tiny-llama-s"], journal=journal or None, max_concurrency=4,
                             progress=False) as run:
            answers = RunnableLambda(ask).batch(list(range(n)))
        report = run.report()
        json.dump({"texts": [a.content for a in answers], "usage": [a.usage_metadata for a in answers],
                   "models": [m.model_dump() for m in report.models]}, open(out, "w"))
""")


def _journal_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


@engine
def test_a_script_killed_mid_batch_resumes_from_its_journal_and_recomputes_only_the_rest(tmp_path):
    import psutil

    n = 60
    script = tmp_path / "journalled.py"
    script.write_text(_JOURNALLED)
    journal = tmp_path / "run.sqlite"

    def run_script(journal_path: str, out: Path) -> dict:
        subprocess.run([sys.executable, str(script), journal_path, str(out), str(n)], cwd=ROOT, check=True,
                       timeout=240, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(out.read_text())

    reference = run_script("", tmp_path / "reference.json")

    child = subprocess.Popen([sys.executable, str(script), str(journal), str(tmp_path / "killed.json"), str(n)],
                             cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and child.poll() is None and _journal_rows(journal) < 12:
            time.sleep(0.02)
        engines = [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
        os.kill(child.pid, signal.SIGKILL)  # the script alone, as `kill -9 PID` does
        child.wait(10)
        recorded = _journal_rows(journal)
        assert 12 <= recorded < n, f"the run must be killed part-way ({recorded} of {n} recorded)"
        # its engine processes notice their pool is gone and exit: none is left holding a core
        deadline = time.monotonic() + 30
        while alive(engines) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(engines), f"engine processes left after the script was killed: {alive(engines)}"
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not (tmp_path / "killed.json").exists()

    rerun = run_script(str(journal), tmp_path / "rerun.json")
    assert len(rerun["texts"]) == n
    assert rerun["texts"] == reference["texts"] and rerun["usage"] == reference["usage"]
    (record,) = rerun["models"]
    assert record["requests_done"] == n and record["requests_failed"] == 0
    assert record["from_journal"] == recorded  # everything that had finished, and only that, comes from it
    assert _journal_rows(journal) == n


# ---- 7. Ctrl-C inside the block -----------------------------------------------------------------------------
_INTERRUPTED = textwrap.dedent("""
    import json, sys, threading, time
    import samullm_lc as samullm
    from langchain_openai import ChatOpenAI

    if __name__ == "__main__":
        n, max_tokens = int(sys.argv[1]), int(sys.argv[2])
        llm = ChatOpenAI(model="tiny-llama-s", base_url="http://127.0.0.1:9/v1", api_key="EMPTY", temperature=0,
                         max_tokens=max_tokens, extra_body={"ignore_eos": True})
        run = samullm.offline(models=["tiny-llama-s"], progress=False)
        try:
            with run:
                def announce():  # once every engine is up and the batch is in the pool (started after its trace)
                    while True:
                        pool = run.pool
                        record = pool.report().models if pool is not None else []
                        pids = pool.backend.pids() if pool is not None else {}
                        if record and record[0].requests_submitted > 0 and len(pids) == 2:
                            print("SAMULLM-TEST RUNNING", json.dumps(sorted(pids.values())), flush=True)
                            return
                        time.sleep(0.05)
                threading.Thread(target=announce, daemon=True).start()
                llm.batch([f"question {i}" for i in range(n)])
            print("SAMULLM-TEST FINISHED", flush=True)
        except KeyboardInterrupt:
            report = run.report()
            print("SAMULLM-TEST INTERRUPTED", json.dumps({"done": report.requests_done,
                  "failed": report.requests_failed, "interrupted": report.interrupted,
                  "engine_failures": report.engine_failures}), flush=True)
            sys.exit(130)
""")


def _processes_marked(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (the script and every process it started)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if marker.encode() in Path(f"/proc/{entry}/environ").read_bytes() and \
                    Path(f"/proc/{entry}/stat").read_text().split(")")[-1].split()[0] != "Z":
                found.append(int(entry))
        except OSError:
            pass
    return found


@engine
@pytest.mark.parametrize("to_group", [False, True], ids=["sigint-to-script", "ctrl-c-in-terminal"])
def test_ctrl_c_inside_the_block_exits_promptly_and_leaves_no_engine(tmp_path, to_group):
    # 200 requests of 1,500 tokens: about 40 s of work on two cores, so a prompt exit means the interrupt
    # cancelled what was in flight. A terminal's Ctrl-C reaches the whole process group (engines included).
    script = tmp_path / "interrupted.py"
    script.write_text(_INTERRUPTED)
    marker = f"SAMULLM_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    child = subprocess.Popen([sys.executable, str(script), "200", "1500"], cwd=ROOT, env=env, text=True,
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines: list[str] = []
    try:
        for line in child.stdout:
            if line.startswith("SAMULLM-TEST"):
                lines.append(line.strip())
                if line.startswith("SAMULLM-TEST RUNNING"):
                    break
        assert lines and lines[-1].startswith("SAMULLM-TEST RUNNING"), lines
        time.sleep(2)
        interrupted_at = time.monotonic()
        if to_group:
            os.killpg(child.pid, signal.SIGINT)
        else:
            os.kill(child.pid, signal.SIGINT)
        rest, _ = child.communicate(timeout=120)
        exit_seconds = time.monotonic() - interrupted_at
        lines += [line for line in rest.splitlines() if line.startswith("SAMULLM-TEST")]
        deadline = time.monotonic() + 5
        while _processes_marked(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _processes_marked(marker)
    finally:
        for pid in _processes_marked(marker):
            os.kill(pid, signal.SIGKILL)
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130 and lines[-1].startswith("SAMULLM-TEST INTERRUPTED"), lines
    assert not left, f"processes left after Ctrl-C: {left}"
    outcome = json.loads(lines[-1].split(" ", 2)[2])
    assert exit_seconds < 15, f"exited {exit_seconds:.1f} s after Ctrl-C: {outcome}"
    assert outcome["interrupted"] and outcome["failed"] > 0, outcome
