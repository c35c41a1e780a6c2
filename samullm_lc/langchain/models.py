"""``ChatSamullm`` and ``SamullmLLM``: LangChain models for new code, served by the pool of the active block.

Each call becomes the OpenAI request a ``ChatOpenAI`` / ``OpenAI`` client would send a vLLM server, handed
to the pool, so sampling, chat templates, structured output and the response are exactly the server's.
Outside an ``offline()`` block (or a ``wrap()``-ed chain) they raise an error saying so.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, BaseLLM, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_openai_messages
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, Generation, LLMResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field

from samullm_lc.errors import ConfigError, RequestError, SamullmError
from samullm_lc.langchain.session import OfflineSession, active_session

OUTSIDE_BLOCK = ("{cls} is served by samullm's engine pool, which runs only inside `with samullm.offline(...):` "
                 "or through a chain wrapped by `samullm.wrap(chain)`; call it there")


class _PoolSampling(BaseModel):
    """The OpenAI request fields both models set; unset fields take the server's defaults. The models refuse
    an unknown field (a misspelt setting would otherwise do nothing)."""

    model: str = Field(description="The model name; inside offline(models=...) a key of that mapping.")
    temperature: float | None = None
    max_tokens: int | None = Field(None, description="None: up to the context limit, as vLLM's server.")
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict, description=(
        "vLLM's extra request fields, as in ChatOpenAI's extra_body: top_k, min_p, repetition_penalty, ..."))
    timeout: float | None = Field(None, gt=0, description="Seconds to wait for an answer; None waits as long as "
                                  "the batch takes (offline, a call waits for its turn on the engines).")
    max_retries: int = Field(2, ge=0, description=(
        "LangChain's standard setting, accepted for compatibility; the pool never retries a call the engine "
        "refused (it would fail the same way) and re-runs on its own the calls of an engine that died."))
    api_key: str | None = Field(None, description="LangChain's standard setting, accepted for compatibility; "
                                "the in-process pool needs no key.")

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._request_fields(None, {})

    def _request_fields(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        fields = {name: getattr(self, name) for name in ("temperature", "max_tokens", "top_p", "seed",
                                                         "presence_penalty", "frequency_penalty", "logprobs",
                                                         "top_logprobs")
                  if getattr(self, name) is not None}
        if self.n != 1:
            fields["n"] = self.n
        if stop or self.stop:
            fields["stop"] = stop or self.stop
        return {"model": self.model, **fields, **self.extra_body, **kwargs}


def _session(cls: str) -> OfflineSession:
    session = active_session()
    if session is None:
        raise SamullmError(OUTSIDE_BLOCK.format(cls=cls))
    return session


def _answer(future: Any, timeout: float | None) -> dict[str, Any]:
    return json.loads(future.result(timeout).response)


async def _aanswer(future: Any, timeout: float | None) -> dict[str, Any]:
    return json.loads((await asyncio.wait_for(asyncio.wrap_future(future), timeout)).response)


class ChatSamullm(_PoolSampling, BaseChatModel):
    """A chat model served by the engine pool: ``ChatSamullm(model="tiny-llama-s", temperature=0)``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    streaming: bool = Field(False, description="Answer invoke() through stream() (one chunk: the whole answer).")

    @property
    def _llm_type(self) -> str:
        return "samullm-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params.update(ls_provider="samullm", ls_model_name=kwargs.get("model", self.model))
        return params

    def _body(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        if kwargs.get("tools") or kwargs.get("tool_choice") not in (None, "none"):
            raise SamullmError("tool calls are not supported yet by the engine pool (no tool parser runs); "
                               "remove the tools, or use with_structured_output for JSON answers")
        return {"messages": convert_to_openai_messages(messages), **self._request_fields(stop, kwargs),
                "stream": False}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        future = _session("ChatSamullm").submit_openai("chat.completions", self._body(messages, stop, kwargs))
        return _chat_result(_result_or_raise(future, self.timeout))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        future = _session("ChatSamullm").submit_openai("chat.completions", self._body(messages, stop, kwargs))
        return _chat_result(await _aresult_or_raise(future, self.timeout))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        """The whole answer as one chunk (offline, only the end-to-end time counts)."""
        chunk = _one_chunk(self._generate(messages, stop=stop, **kwargs))
        if run_manager:
            run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                       ) -> AsyncIterator[ChatGenerationChunk]:
        chunk = _one_chunk(await self._agenerate(messages, stop=stop, **kwargs))
        if run_manager:
            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        raise NotImplementedError("ChatSamullm does not support tool calls yet (the engine pool runs no tool "
                                  "parser); use with_structured_output(schema) for JSON answers")

    def with_structured_output(self, schema: dict | type, *, method: Literal[
            "json_schema", "json_mode", "function_calling"] = "json_schema", include_raw: bool = False,
            strict: bool | None = None, **kwargs: Any) -> Runnable:
        """Answers constrained by vLLM's structured-output decoding to ``schema`` (a pydantic class or a JSON
        schema; ``function_calling`` is served the same way, as no tool parser runs); ``json_mode`` asks only
        for a JSON object. The grammar always holds the answer to the schema, so ``strict`` changes nothing."""
        if kwargs:
            raise ConfigError(f"with_structured_output takes no arguments {sorted(kwargs)}; it takes schema, method, "
                              f"include_raw and strict")
        is_model = isinstance(schema, type) and is_basemodel_subclass(schema)
        json_schema = convert_to_json_schema(schema)
        traced = {"kwargs": {"method": method, "strict": strict}, "schema": json_schema}
        if method in ("json_schema", "function_calling"):
            response_format = {"type": "json_schema",
                               "json_schema": {"name": json_schema.get("title", "answer"), "schema": json_schema}}
        elif method == "json_mode":
            response_format = {"type": "json_object"}
        else:
            raise ConfigError(f"method must be 'json_schema', 'json_mode' or 'function_calling', got {method!r}")
        bound = self.bind(response_format=response_format, ls_structured_output_format=traced)
        parser = PydanticOutputParser(pydantic_object=schema) if is_model else JsonOutputParser()
        if not include_raw:
            return bound | parser
        parse = RunnablePassthrough.assign(parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None)
        return RunnableMap(raw=bound) | parse


class SamullmLLM(_PoolSampling, BaseLLM):
    """A completion model (text in, text out) served by the engine pool."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    @property
    def _llm_type(self) -> str:
        return "samullm-completion"

    def _bodies(self, prompts: list[str], stop: list[str] | None, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"prompt": prompt, **self._request_fields(stop, kwargs), "stream": False} for prompt in prompts]

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        session = _session("SamullmLLM")
        futures = [session.submit_openai("completions", body) for body in self._bodies(prompts, stop, kwargs)]
        return _llm_result([_result_or_raise(f, self.timeout) for f in futures], self.model)

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        session = _session("SamullmLLM")
        futures = [session.submit_openai("completions", body) for body in self._bodies(prompts, stop, kwargs)]
        return _llm_result([await _aresult_or_raise(f, self.timeout) for f in futures], self.model)


def _result_or_raise(future: Any, timeout: float | None) -> dict[str, Any]:
    try:
        return _answer(future, timeout)
    except RequestError as exc:
        raise SamullmError(str(exc)) from None
    except TimeoutError:
        raise SamullmError(f"no answer within timeout={timeout} s; the call stays queued in the pool") from None


async def _aresult_or_raise(future: Any, timeout: float | None) -> dict[str, Any]:
    try:
        return await _aanswer(future, timeout)
    except RequestError as exc:
        raise SamullmError(str(exc)) from None
    except TimeoutError:
        raise SamullmError(f"no answer within timeout={timeout} s; the call stays queued in the pool") from None


def _one_chunk(result: ChatResult) -> ChatGenerationChunk:
    """A chat result's first answer as the last (and only) chunk of a stream."""
    generation = result.generations[0]
    message = generation.message
    chunk = AIMessageChunk(content=message.content, id=message.id, response_metadata=message.response_metadata,
                           usage_metadata=message.usage_metadata, chunk_position="last")
    return ChatGenerationChunk(message=chunk, generation_info=generation.generation_info)


def _usage(answer: dict[str, Any]) -> dict[str, int]:
    return answer.get("usage") or {}


def _chat_result(answer: dict[str, Any]) -> ChatResult:
    """The server's chat answer as LangChain generations (one per choice), with its usage and metadata."""
    usage = _usage(answer)
    generations = []
    for choice in answer["choices"]:
        message = choice["message"]
        metadata = {"model_name": answer.get("model"), "finish_reason": choice.get("finish_reason"),
                    "system_fingerprint": answer.get("system_fingerprint"), "id": answer.get("id"),
                    "model_provider": "samullm"}
        if choice.get("logprobs"):
            metadata["logprobs"] = choice["logprobs"]
        ai = AIMessage(content=message.get("content") or "", response_metadata=metadata,
                       usage_metadata=UsageMetadata(input_tokens=usage.get("prompt_tokens", 0),
                                                    output_tokens=usage.get("completion_tokens", 0),
                                                    total_tokens=usage.get("total_tokens", 0)))
        generations.append(ChatGeneration(message=ai, generation_info={"finish_reason": choice.get("finish_reason"),
                                                                       "logprobs": choice.get("logprobs")}))
    return ChatResult(generations=generations, llm_output={"token_usage": usage, "model_name": answer.get("model"),
                                                          "system_fingerprint": answer.get("system_fingerprint")})


def _llm_result(answers: list[dict[str, Any]], model: str) -> LLMResult:
    """The server's completion answers as LangChain generations (one list per prompt)."""
    totals: dict[str, int] = {}
    generations = []
    for answer in answers:
        for key, value in _usage(answer).items():
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
        generations.append([Generation(text=c["text"], generation_info={"finish_reason": c.get("finish_reason"),
                                                                         "logprobs": c.get("logprobs")})
                            for c in answer["choices"]])
    return LLMResult(generations=generations, llm_output={"token_usage": totals, "model_name": model})
