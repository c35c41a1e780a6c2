"""Lifecycle of the LangChain drop-in: blocks entered many times leak nothing, nested and repeated blocks serve
the right calls, ``wrap(chain)`` serves as ``offline()`` does and ``close()`` stops its engines, and the pool's
own models say where they must be called.

Clients point at ``http://127.0.0.1:9/v1`` (port 9 is closed): a call that escaped interception fails with a
connection error. Tests marked ``engine`` start vLLM engines: run them under ``flock /tmp/samullm-engine.lock``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading

import openai
import psutil
import pytest
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from processes import alive

import samullm_lc as samullm
from samullm_lc.errors import SamullmError
from samullm_lc.langchain.session import active_session

pytestmark = pytest.mark.timeout(300)
MODEL = "tiny-llama-s"
CLOSED = "http://127.0.0.1:9/v1"
SIM = {"backend": "sim", "devices": "8xA100-80GB", "models": ["Llama-2-7b-hf"], "progress": False}


def chat(model: str = MODEL, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=CLOSED, api_key="EMPTY", **{"temperature": 0, "max_tokens": 8, **kwargs})


def _hooks() -> dict[str, object]:
    """Every function the drop-in replaces, as it is now (installed once: the same objects ever after)."""
    import httpx
    import httpx2
    import vllm
    from langchain_community.llms.vllm import VLLM
    from langchain_core.language_models import BaseLLM
    from langchain_core.rate_limiters import InMemoryRateLimiter

    return {"httpx2.Client.send": httpx2.Client.send, "httpx2.AsyncClient.send": httpx2.AsyncClient.send,
            "httpx.Client.send": httpx.Client.send, "httpx.AsyncClient.send": httpx.AsyncClient.send,
            "BaseLLM.batch": BaseLLM.batch, "BaseLLM.abatch": BaseLLM.abatch,
            "InMemoryRateLimiter.acquire": InMemoryRateLimiter.acquire,
            "InMemoryRateLimiter.aacquire": InMemoryRateLimiter.aacquire,
            "VLLM._generate": VLLM._generate, "vllm.LLM": vllm.LLM}


def _children() -> set[int]:
    """This process's live child processes (multiprocessing's resource tracker, once started, stays: not counted)."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def _resources() -> dict[str, object]:
    gc.collect()
    from langchain_core.runnables.config import var_child_runnable_config
    from langchain_core.tracers.context import _configure_hooks

    return {"threads": sorted(t.name for t in threading.enumerate()), "children": _children(),
            "callback_hooks": len(_configure_hooks),
            "callback_handlers": [var.get() for var, *_ in _configure_hooks],
            "fds": len(os.listdir("/proc/self/fd")), "runnable_config": var_child_runnable_config.get(),
            "active_session": active_session()}


# ---- 10. outside any block ----------------------------------------------------------------------------------
def test_the_pools_own_models_outside_any_block_say_to_use_offline_or_wrap():
    assert active_session() is None
    for model in (samullm.ChatSamullm(model=MODEL), samullm.SamullmLLM(model=MODEL)):
        with pytest.raises(SamullmError, match=r"offline\(.*wrap\(chain\)"):
            model.invoke("hello")
        with pytest.raises(SamullmError, match=r"offline\(.*wrap\(chain\)"):
            asyncio.run(model.ainvoke("hello"))
        with pytest.raises(SamullmError, match=r"offline\(.*wrap\(chain\)"):
            model.batch(["a", "b"])


def test_a_model_made_inside_a_block_and_called_after_it_says_to_use_offline_or_wrap():
    with samullm.offline(**SIM):
        model = samullm.ChatSamullm(model="Llama-2-7b-hf")
    with pytest.raises(SamullmError, match=r"offline\(.*wrap\(chain\)"):
        model.invoke("hello")


def test_outside_a_block_langchain_clients_are_left_alone():
    with samullm.offline(**SIM):
        pass  # the hooks are installed now, and must do nothing outside a block
    with pytest.raises(openai.APIConnectionError):
        chat(max_retries=0).invoke("this goes to the (closed) port")


# ---- 8. entering blocks many times leaks nothing ------------------------------------------------------------
def test_entering_a_block_fifty_times_leaks_no_hook_thread_process_or_file():
    with samullm.offline(**SIM):  # the first block installs the hooks
        pass
    hooks, before = _hooks(), _resources()
    for k in range(50):
        with samullm.offline(**SIM, trace=k % 2 == 1) as run:  # a traced block starts its pool at its first batch
            assert active_session() is run and (run.pool is not None) == (k % 2 == 0)
            assert any(t.name == "samullm-pool-driver" for t in threading.enumerate()) == (k % 2 == 0)
    after = _resources()
    changed = [name for name, fn in _hooks().items() if fn is not hooks[name]]
    assert not changed, f"hooks installed again: {changed}"
    assert after == before


@pytest.mark.engine
def test_real_blocks_each_serve_a_call_and_leave_no_engine_or_thread_and_a_session_enters_again():
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # started by the first engine process and kept for the process's life
    llm = chat()
    before = _resources()
    run = samullm.offline(models=[MODEL], progress=False)
    for k in range(2):  # the same session entered again: a new pool each time
        with run:
            assert llm.invoke(f"call {k}").content
            engines = set(run.pool.backend.pids().values())
            assert engines and engines <= _children()
            assert run.report().requests_done == 1
        assert run.report().requests_done == 1 and run.pool is None
        assert not alive(engines), f"block {k}: engine processes left: {alive(engines)}"
        now = _resources()
        assert now["children"] == before["children"], f"block {k}: processes left"
        assert now["threads"] == before["threads"], f"block {k}: threads left"
        assert now["fds"] == before["fds"], f"block {k}: {now['fds'] - before['fds']} file descriptors left"
        assert now["active_session"] is None and now["runnable_config"] == before["runnable_config"]


# ---- 9. nested, repeated and wrapped ------------------------------------------------------------------------
@pytest.mark.engine
def test_nested_blocks_serve_inside_and_the_outer_block_serves_again_after():
    # The outer block serves clients by their own model names and starts its pool at its first call, so only
    # one engine runs at a time (one core each).
    with samullm.offline(devices="1xcpu", progress=False) as outer:
        assert active_session() is outer
        with samullm.offline(models={"inner": MODEL}, devices="1xcpu", progress=False) as inner:
            assert active_session() is inner
            assert chat("inner").invoke("inside").content
            with pytest.raises(openai.NotFoundError, match="'tiny-llama-s'"):
                chat(MODEL).invoke("the inner block does not serve this name")
            inner_engines = set(inner.pool.backend.pids().values())
            assert outer.pool is None
        assert not alive(inner_engines)
        assert active_session() is outer
        assert chat(MODEL).invoke("after the inner block").content
        with pytest.raises(openai.NotFoundError, match="'inner'"):
            chat("inner").invoke("the outer block does not serve this name")
        outer_engines = set(outer.pool.backend.pids().values())
    assert active_session() is None and not alive(outer_engines)
    assert inner.report().call_sites == {"inner": 1} and inner.report().requests_done == 1
    assert outer.report().call_sites == {MODEL: 1} and outer.report().requests_done == 1


def _same(a, b) -> bool:
    return (a.content, a.usage_metadata, a.response_metadata.get("finish_reason")) == (
        b.content, b.usage_metadata, b.response_metadata.get("finish_reason"))


@pytest.mark.engine
def test_wrap_serves_invoke_batch_and_abatch_as_offline_does_and_close_stops_its_engines():
    chain = ChatPromptTemplate.from_template("Answer briefly: {text}") | chat(max_tokens=12)
    inputs = [{"text": "word " * (i + 1)} for i in range(12)]
    with samullm.offline(models=[MODEL], progress=False):
        expected = chain.batch(inputs)

    fast = samullm.wrap(chain, models=[MODEL], progress=False)
    assert fast.session.pool is None  # started at the first call
    try:
        assert _same(fast.invoke(inputs[3]), expected[3])
        batch = fast.batch(inputs)
        abatch = asyncio.run(fast.abatch(inputs))
        assert all(_same(a, b) for a, b in zip(batch, expected, strict=True))
        assert all(_same(a, b) for a, b in zip(abatch, expected, strict=True))
        engines = set(fast.session.pool.backend.pids().values())
        assert engines
        # only the wrapped chain's calls are served: other LangChain code of the process is left alone
        assert active_session() is None
        with pytest.raises(openai.APIConnectionError):
            chat(max_retries=0).invoke("not the wrapped chain")
        assert fast.report().requests_done == 1 + 2 * len(inputs)
    finally:
        fast.close()
    assert fast.session.pool is None and not alive(engines)
    assert fast.report().requests_done == 1 + 2 * len(inputs)

    with fast:  # a later call starts a new pool; leaving the with-block stops it
        assert _same(fast.invoke(inputs[0]), expected[0])
        again = set(fast.session.pool.backend.pids().values())
    assert fast.session.pool is None and not alive(again)
