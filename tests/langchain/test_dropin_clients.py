"""Every client the drop-in serves, on the real engine: community ``VLLMOpenAI`` and ``VLLM``, langchain-openai
``OpenAI`` with logprobs, ``SamullmLLM``, streaming and events, structured output through vLLM's decoding."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from json_bias import json_punctuation_bias
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI, OpenAI
from pydantic import BaseModel

import samullm_lc as samullm
from samullm_lc.langchain.intercept import PoolCompletionClient

pytestmark = pytest.mark.engine
MODEL = "tiny-llama-s"
URL = "http://127.0.0.1:9/v1"  # nothing listens: a call that escaped interception fails


@pytest.fixture(scope="module")
def block() -> Any:
    with samullm.offline(models=[MODEL], progress=False) as run:
        yield run
    assert run.report().requests_failed == 0


def test_community_clients_are_served_and_vllm_loads_no_weights(block: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community announces its sunset
        from langchain_community.llms import VLLM, VLLMOpenAI

    remote = VLLMOpenAI(model_name=MODEL, openai_api_base=URL, openai_api_key="EMPTY", temperature=0, max_tokens=8)
    local = VLLM(model=MODEL, temperature=0, max_new_tokens=8)
    assert isinstance(local.client, PoolCompletionClient)  # made inside the block: the pool owns the weights
    prompts = ["hello", "a longer prompt about rivers"]
    assert remote.batch(prompts) == local.batch(prompts)  # the same engine, the same greedy answers
    assert all(text for text in remote.batch(prompts))


def test_completion_client_keeps_logprobs_and_usage(block: Any) -> None:
    llm = OpenAI(model=MODEL, base_url=URL, api_key="EMPTY", temperature=0, max_tokens=6, logprobs=2)
    result = llm.generate(["Once upon a time"])
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] == "length" and len(info["logprobs"]["tokens"]) == 6
    assert result.llm_output["token_usage"]["completion_tokens"] == 6


def test_own_completion_model(block: Any) -> None:
    texts = samullm.SamullmLLM(model=MODEL, temperature=0, max_tokens=5).batch(["a", "b", "c"])
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_streaming_and_events_deliver_the_whole_answer(block: Any) -> None:
    client = ChatOpenAI(model=MODEL, base_url=URL, api_key="EMPTY", temperature=0, max_tokens=8)
    whole = client.invoke("stream this").content
    assert "".join(chunk.content for chunk in client.stream("stream this")) == whole
    streaming = ChatOpenAI(model=MODEL, base_url=URL, api_key="EMPTY", temperature=0, max_tokens=8, streaming=True)
    assert streaming.invoke("stream this").content == whole

    async def events() -> list[str]:
        chain = ChatPromptTemplate.from_template("{q}") | client | StrOutputParser()
        return [e["event"] async for e in chain.astream_events({"q": "stream this"}, version="v2")]

    seen = asyncio.run(events())
    assert "on_chat_model_start" in seen and "on_chat_model_end" in seen and "on_chat_model_stream" in seen


class Verdict(BaseModel):
    score: int


def test_structured_output_runs_on_vllms_decoding(block: Any) -> None:
    """The grammar holds the answer to the schema; a logit bias towards JSON's punctuation lets the random
    model close it within the token budget (it would otherwise write whitespace)."""
    judge = ChatOpenAI(model=MODEL, base_url=URL, api_key="EMPTY", temperature=0, max_tokens=64,
                       logit_bias=json_punctuation_bias(MODEL))
    answer = judge.with_structured_output(Verdict, method="json_schema").invoke("Score: 2+2=4")
    assert isinstance(answer, Verdict)
