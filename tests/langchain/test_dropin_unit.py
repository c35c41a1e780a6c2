"""The drop-in's LangChain side with a fake pool (no engine): what is intercepted, what reaches the pool and how
much at once, what passes through, what fails and how. The real engine is covered by the other files here."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import Future
from typing import Any

import httpx2
import openai
import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.rate_limiters import InMemoryRateLimiter
from langchain_core.runnables import RunnableLambda, RunnableParallel
from langchain_core.runnables.config import ensure_config
from langchain_openai import ChatOpenAI, OpenAI

import samullm_lc as samullm
from samullm_lc.errors import ConfigError, RequestError, SamullmError
from samullm_lc.langchain import intercept
from samullm_lc.langchain.session import OfflineSession, active_session
from samullm_lc.runtime.report import RunReport
from samullm_lc.runtime.requests import GenerationResult

URL = "http://127.0.0.1:9/v1"  # nothing listens there: a call that escaped interception fails to connect


class FakePool:
    """Answers OpenAI calls at once, echoing the last message (or the prompt), shaped as vLLM's server does;
    with ``hold``, answers nothing until that many calls are in flight (proves they arrive together)."""

    def __init__(self, models: list[str], hold: int = 0) -> None:
        self.models = list(models)
        self.calls: list[dict[str, Any]] = []
        self.hold = hold
        self._held: list[tuple[Future, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.peak_in_flight = 0

    def submit(self, model: str, *, openai: dict[str, Any], node: str | None = None) -> Future:
        future: Future = Future()
        with self._lock:
            self.calls.append(openai)
            self._held.append((future, openai))
            self.peak_in_flight = max(self.peak_in_flight, len(self._held))
            if len(self._held) < self.hold:
                return future
            held, self._held = self._held, []
        for waiting, call in held:
            waiting.set_result(_answer(model, call))
        return future

    def report(self) -> RunReport:
        return RunReport(backend="fake", cluster="1xcpu", planner="none")

    def close(self, *, cancel: bool = False) -> None:
        pass


def _answer(model: str, call: dict[str, Any]) -> GenerationResult:
    body = call["body"]
    if call["route"] == "chat.completions":
        text = f"echo: {body['messages'][-1]['content']}"
        choices = [{"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                    "logprobs": None, "finish_reason": "stop", "stop_reason": None}]
        kind = "chat.completion"
    else:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = [{"index": i, "text": f"echo: {p}", "logprobs": None, "finish_reason": "stop", "stop_reason": None}
                   for i, p in enumerate(prompts)]
        kind = "text_completion"
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    response = {"id": "x-1", "object": kind, "created": 1, "model": body["model"], "choices": choices,
                "usage": usage, "system_fingerprint": None}
    return GenerationResult(model=model, completions=[], prompt_tokens=3, response=json.dumps(response))


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Any:
    """An open block whose pool is a ``FakePool`` (``served(hold=N)`` to hold answers until N calls)."""
    sessions: list[OfflineSession] = []

    def make(models: tuple[str, ...] = ("m",), hold: int = 0, **options: Any) -> OfflineSession:
        session = samullm.offline(models=list(models), backend="sim", devices="8xA100-80GB", trace=False, **options)
        monkeypatch.setattr(session, "_serve_models", lambda names: session.pool)
        session.pool = FakePool(list(models), hold)  # type: ignore[assignment]
        session.__enter__()
        sessions.append(session)
        return session

    yield make
    for session in reversed(sessions):
        session.__exit__(None, None, None)


def chat(model: str = "m", **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=URL, api_key="EMPTY", max_retries=0, **kwargs)


def test_a_chat_client_is_served_by_the_pool_with_its_own_request(served: Any) -> None:
    session = served()
    message = chat(temperature=0, max_tokens=7).invoke("hello")
    assert message.content == "echo: hello"
    assert message.response_metadata["model_name"] == "m"
    assert message.usage_metadata["total_tokens"] == 5
    body = session.pool.calls[0]["body"]
    assert body["max_completion_tokens"] == 7 and body["temperature"] == 0  # the client's own payload
    assert session.pool.calls[0]["route"] == "chat.completions"


def test_a_completion_client_batch_runs_each_input_on_its_own(served: Any) -> None:
    session = served()
    llm = OpenAI(model="m", base_url=URL, api_key="EMPTY", max_retries=0)
    assert llm.batch(["a", "b", "c"]) == ["echo: a", "echo: b", "echo: c"]  # no endless re-splitting
    assert sum(1 for c in session.pool.calls if c["route"] == "completions") == 3
    answer = session.pool.submit

    def refuse_b(model: str, *, openai: dict[str, Any], node: str | None = None) -> Future:
        if openai["body"]["prompt"] != ["b"]:
            return answer(model, openai=openai)
        future: Future = Future()
        future.set_exception(RequestError("VLLMValidationError: prompt too long"))
        return future

    session.pool.submit = refuse_b
    results = llm.batch(["a", "b", "c"], return_exceptions=True)
    assert results[0] == "echo: a" and results[2] == "echo: c"  # a refused prompt fails only its input
    assert isinstance(results[1], openai.BadRequestError)


@pytest.mark.timeout(60)  # a pipeline that sent fewer calls at once would wait for answers forever
@pytest.mark.parametrize("shape", ["batch", "abatch", "parallel", "map"])
def test_a_whole_batch_reaches_the_pool_at_once(served: Any, shape: str) -> None:
    inputs = [{"q": f"q{i}"} for i in range(120)]
    expected = 120 * (2 if shape == "parallel" else 1)
    session = served(hold=expected)  # nothing is answered until every call has arrived
    step = ChatPromptTemplate.from_template("{q}") | chat() | StrOutputParser()
    if shape == "parallel":
        chain: Any = RunnableParallel(a=step, b=step)
    elif shape == "map":
        chain = RunnableLambda(lambda xs: xs) | step.map()
        inputs = [inputs]  # type: ignore[list-item]
    else:
        chain = step
    results = asyncio.run(chain.abatch(inputs)) if shape == "abatch" else chain.batch(inputs)
    assert len(results) == len(inputs)
    assert session.pool.peak_in_flight == expected


def test_the_block_sets_langchains_concurrency_and_a_callers_value_wins(served: Any) -> None:
    assert ensure_config().get("max_concurrency") is None
    served(max_concurrency=300)
    assert ensure_config()["max_concurrency"] == 300
    assert ensure_config({"max_concurrency": 4})["max_concurrency"] == 4


def test_rate_limiters_do_not_throttle_calls_inside_the_block(served: Any) -> None:
    served()
    slow = chat(rate_limiter=InMemoryRateLimiter(requests_per_second=0.01, check_every_n_seconds=0.01))
    started = time.monotonic()
    assert len(slow.batch([f"x{i}" for i in range(5)])) == 5
    assert time.monotonic() - started < 5  # 5 calls at 0.01/s would take minutes

    class MyLimiter(InMemoryRateLimiter):  # defined after the hooks: wrapped too
        pass

    assert MyLimiter(requests_per_second=0.001).acquire(blocking=True)


def test_other_http_traffic_passes_through(served: Any) -> None:
    served()
    seen: list[str] = []
    client = httpx2.Client(transport=httpx2.MockTransport(lambda r: seen.append(str(r.url)) or httpx2.Response(204)))
    assert client.get("http://example.invalid/v1/chat/completions").status_code == 204
    assert seen == ["http://example.invalid/v1/chat/completions"]


def test_other_openai_routes_fail_clearly_and_stay_off_the_network(served: Any) -> None:
    served()
    client = openai.OpenAI(base_url=URL, api_key="EMPTY", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="not served by the engine pool"):
        client.embeddings.create(model="m", input="x")


def test_an_unknown_model_names_the_entry_to_add(served: Any) -> None:
    served()
    with pytest.raises(openai.NotFoundError, match=r"models=\{\.\.\., 'qwen-7b'"):
        chat("qwen-7b").invoke("x")


def test_tools_without_a_tool_parser_fail_clearly(served: Any) -> None:
    served()

    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    with pytest.raises(openai.BadRequestError, match="tool_parser"):
        chat().bind_tools([add]).invoke("x")


def test_a_failed_request_fails_its_call_with_the_engines_reason(served: Any) -> None:
    session = served()

    def refuse(model: str, *, openai: dict[str, Any], node: str | None = None) -> Future:
        future: Future = Future()
        future.set_exception(RequestError("request 1 failed: VLLMValidationError: prompt too long"))
        return future

    session.pool.submit = refuse
    with pytest.raises(openai.BadRequestError, match="prompt too long"):
        chat().invoke("x")


def test_call_sites_name_the_model_and_the_step(served: Any) -> None:
    session = served()
    (ChatPromptTemplate.from_template("{q}") | chat() | StrOutputParser()).batch([{"q": "a"}, {"q": "b"}])
    assert session.report().call_sites == {"m @ seq:step:2": 2}


def test_blocks_nest_and_leave_nothing_behind(served: Any) -> None:
    send = httpx2.Client.send
    outer = served()
    inner = served()
    assert active_session() is inner
    inner.__exit__(None, None, None)
    assert active_session() is outer
    outer.__exit__(None, None, None)
    assert active_session() is None
    assert httpx2.Client.send is send  # hooks are installed once, not per block
    with pytest.raises(openai.APIConnectionError):  # outside a block the client goes to its URL again
        chat().invoke("x")


def test_own_models_say_what_to_do_outside_a_block() -> None:
    with pytest.raises(SamullmError, match="offline"):
        samullm.ChatSamullm(model="m").invoke("x")
    with pytest.raises(SamullmError, match="offline"):
        samullm.SamullmLLM(model="m").invoke("x")


def test_own_chat_model_through_the_fake_pool(served: Any) -> None:
    session = served()
    answer = samullm.ChatSamullm(model="m", max_tokens=5, extra_body={"top_k": 3}).invoke("hi")
    assert answer.content == "echo: hi" and answer.usage_metadata["input_tokens"] == 3
    assert session.pool.calls[0]["body"]["top_k"] == 3 and session.pool.calls[0]["body"]["max_tokens"] == 5
    with pytest.raises(NotImplementedError, match="tool calls"):
        samullm.ChatSamullm(model="m").bind_tools([])


@pytest.mark.parametrize(("options", "match"), [
    ({"models": "tiny-llama-s"}, "write models=\\['tiny-llama-s'\\]"),
    ({"models": {}}, "models is empty"),
    ({"models": {"a": ""}}, "non-empty strings"),
    ({"max_concurrency": 0}, "max_concurrency"),
    ({"devices": 8}, "devices must be"),
    ({"tool_parser": "nope"}, "unknown tool parser"),
    ({"backend": "gpu"}, "unknown backend"),
])
def test_bad_options_fail_with_the_fix(options: dict[str, Any], match: str) -> None:
    options = {"models": ["m"], "devices": "8xA100-80GB", **options}
    with pytest.raises(ConfigError, match=match):
        samullm.offline(**options)


def test_hooks_install_once() -> None:
    intercept.install()
    send = httpx2.Client.send
    intercept.install()
    assert httpx2.Client.send is send


def test_langchain_keeps_its_cache_bind_and_config(served: Any) -> None:
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import get_llm_cache, set_llm_cache

    session = served()
    previous = get_llm_cache()
    set_llm_cache(InMemoryCache())
    try:
        client = chat(temperature=0)
        first, second = client.invoke("cached?"), client.invoke("cached?")
        assert first.content == second.content and len(session.pool.calls) == 1  # the second came from the cache
    finally:
        set_llm_cache(previous)
    chat().bind(stop=["END"]).with_config(tags=["mine"]).invoke("bound")
    assert session.pool.calls[-1]["body"]["stop"] == ["END"]
