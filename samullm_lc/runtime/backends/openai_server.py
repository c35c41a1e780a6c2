"""vLLM's own OpenAI serving code, run inside an engine worker on the worker's stepped engine, without HTTP.

The drop-in hands the pool the exact request body a LangChain client sent to its vLLM server. Here vLLM's
``OpenAIServingChat`` / ``OpenAIServingCompletion`` (the classes behind ``vllm serve``) validate it, apply
the chat template, map the sampling settings (server defaults from the model's generation config, max
tokens up to the context limit, structured output, logprobs) and build the response body, so a result is
the one a server would return. Only the engine differs: ``_SteppedEngineClient`` takes the serving code's
``generate`` calls into the worker's ``LLMEngine``, which the worker steps itself (one event-loop turn per
step), and hands each finished ``RequestOutput`` back. Streaming requests are answered with the server's
own event stream, produced at the end in one piece (every token's chunk, delivered together).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from samullm_lc.runtime.backends.worker_messages import CompletionOutput, completion_outputs
from samullm_lc.runtime.requests import OPENAI_ROUTES

CLOSE_WAIT_SECONDS = 1.0
"""How long closing waits for the cancelled calls' serving code to wind up."""
SETTLE_TURNS = 3
"""Event-loop turns run after a call's first engine request, so its other prompts reach the engine too."""

EngineAdd = Callable[[str, Any, Any], None]
"""Adds a request to the worker's engine: (engine request id, engine input, ``SamplingParams``)."""
EngineAbort = Callable[[str], None]
"""Takes a request out of the worker's engine (its engine request id) if it is still there."""


@dataclass(slots=True)
class ServedCall:
    """One OpenAI call in flight: its serving task, and the engine output it waits for."""

    request_id: int
    task: asyncio.Task | None = None
    outputs: dict[str, asyncio.Future] = field(default_factory=dict)  # engine request id -> its final output
    entered: asyncio.Event = field(default_factory=asyncio.Event)  # reached the engine, or finished

    def answered(self) -> bool:
        """Every engine request of the call has its output."""
        return bool(self.outputs) and all(f.done() for f in self.outputs.values())

    def finished_outputs(self) -> list[Any]:
        return [f.result() for f in self.outputs.values() if f.done() and not f.cancelled()]


@dataclass(slots=True)
class ServedResult:
    """What a finished call returns: the response body (or an error body), its status, and engine facts."""

    request_id: int
    status: int
    body: str  # JSON, or the server-sent event stream for a streaming call
    completions: list[CompletionOutput]
    prompt_tokens: int


class _SteppedEngineClient:
    """The part of vLLM's ``EngineClient`` the serving classes use, over an engine the worker steps."""

    def __init__(self, engine: Any, add: EngineAdd, abort: EngineAbort, calls: dict[str, ServedCall]) -> None:
        self._engine = engine
        self._add = add
        self._abort = abort
        self._calls = calls
        self.model_config = engine.model_config
        self.vllm_config = engine.vllm_config
        self.renderer = engine.renderer
        self.input_processor = engine.input_processor
        self.errored = False
        self.dead_error = RuntimeError("the engine is stopped")

    def check_admission(self, n: int = 1, request_id: str | None = None) -> None:
        """The pool's driver bounds what is in flight; nothing more to refuse here."""

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str, **_: Any
                       ) -> AsyncGenerator[Any, None]:
        from vllm.sampling_params import RequestOutputKind

        call = self._calls[_current_call.get()]
        sampling_params.output_kind = RequestOutputKind.FINAL_ONLY  # one output at the end, streaming or not
        engine_id = f"{call.request_id}:{len(call.outputs)}"  # a completions call may hold several prompts
        output = call.outputs[engine_id] = asyncio.get_running_loop().create_future()
        self._add(engine_id, prompt, sampling_params)
        call.entered.set()
        try:
            yield await output
        finally:
            if not output.done():  # the serving code gave up on it (a sibling prompt failed, or cancelled)
                self._abort(engine_id)


_current_call: contextvars.ContextVar[str] = contextvars.ContextVar("samullm_openai_call")
"""The call whose serving task is running (each task runs in its own copy of the context)."""


class OpenAIServer:
    """vLLM's chat and completion serving over one worker engine; the worker drives it step by step."""

    def __init__(self, llm: Any, add: EngineAdd, abort: EngineAbort) -> None:
        self.loop = asyncio.new_event_loop()
        self.calls: dict[str, ServedCall] = {}
        self._engine = llm.llm_engine
        self._client = _SteppedEngineClient(self._engine, add, abort, self.calls)
        self._servings: dict[tuple[str, str | None], tuple[Any, Any]] = {}
        self._finished: list[ServedResult] = []

    # ---- the worker's calls ----------------------------------------------------------------------------
    def start(self, request_id: int, call: dict[str, Any]) -> None:
        """Begin serving one call ({"route": ..., "body": ...}) until it reaches the engine or fails."""
        served = ServedCall(request_id)
        self.calls[str(request_id)] = served
        token = _current_call.set(str(request_id))
        try:
            served.task = self.loop.create_task(self._serve(served, call["route"], call["body"],
                                                            call.get("tool_parser")))
        finally:
            _current_call.reset(token)

    def settle(self) -> None:
        """Run the event loop until every started call has reached the engine or finished."""
        waiting = [c.entered for c in self.calls.values() if not c.entered.is_set()]
        if waiting:
            self.loop.run_until_complete(_all_set(waiting))
            for _ in range(SETTLE_TURNS):  # a call with several prompts starts its other engine requests
                self.loop.run_until_complete(asyncio.sleep(0))

    def deliver(self, engine_id: str, output: Any) -> None:
        """Hand a call one of its engine requests' finished output."""
        call = self.calls.get(engine_id.split(":")[0])
        future = call.outputs.get(engine_id) if call is not None else None
        if future is not None and not future.done():
            future.set_result(output)

    def finish(self) -> list[ServedResult]:
        """Run the event loop until the calls handed an output are done; their results."""
        pending = [c.task for c in self.calls.values() if c.task is not None and c.answered() and not c.task.done()]
        if pending:
            self.loop.run_until_complete(asyncio.wait(pending))
        finished, self._finished = self._finished, []
        return finished

    def forget(self, request_id: int) -> None:
        """Drop a call the engine could not run (the worker reports the error)."""
        call = self.calls.pop(str(request_id), None)
        if call is not None and call.task is not None and not call.task.done():
            call.task.cancel()

    def close(self) -> None:
        """Cancel the calls still in flight (the pool re-runs them elsewhere) and close the event loop."""
        tasks = [c.task for c in self.calls.values() if c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.wait(tasks, timeout=CLOSE_WAIT_SECONDS))
        self.loop.close()

    # ---- one call -------------------------------------------------------------------------------------
    async def _serve(self, call: ServedCall, route: str, body: dict[str, Any], tool_parser: str | None) -> None:
        status, text = 500, ""
        try:
            status, text = await self._respond(call, route, body, tool_parser)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the server answers 500 with the error; so do we
            status, text = 500, error_body(f"{type(exc).__name__}: {exc}", 500)
        finally:
            call.entered.set()
            self.calls.pop(str(call.request_id), None)
        outputs = call.finished_outputs()
        completions = [c for output in outputs for c in completion_outputs(output)]
        prompt_tokens = sum(len(output.prompt_token_ids or ()) for output in outputs)
        self._finished.append(ServedResult(call.request_id, status, text, completions, prompt_tokens))

    async def _respond(self, call: ServedCall, route: str, body: dict[str, Any], tool_parser: str | None
                       ) -> tuple[int, str]:
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        if route not in OPENAI_ROUTES:
            return 404, error_body(f"route {route!r} is not served; served: {', '.join(OPENAI_ROUTES)}", 404)
        request_type = ChatCompletionRequest if route == "chat.completions" else CompletionRequest
        try:
            request = request_type.model_validate(body)
        except ValidationError as exc:
            return 400, error_body(_validation_message(exc), 400)
        chat, completion = self._serving(request.model, tool_parser)
        create = chat.create_chat_completion if route == "chat.completions" else completion.create_completion
        response = await create(request, None)
        if isinstance(response, ErrorResponse):
            return response.error.code, json.dumps(response.model_dump())
        if hasattr(response, "model_dump"):
            return 200, json.dumps(response.model_dump())
        chunks = [chunk async for chunk in response]  # a streaming call: the server's events, in one piece
        return 200, "".join(chunks)

    def _serving(self, name: str | None, tool_parser: str | None) -> tuple[Any, Any]:
        """vLLM's chat and completion serving answering to ``name``, as a server started with
        ``--served-model-name NAME`` (the name the client uses; the folder if it gives none) and, with a
        ``tool_parser``, ``--enable-auto-tool-choice --tool-call-parser PARSER``."""
        from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
        from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
        from vllm.entrypoints.openai.models.protocol import BaseModelPath
        from vllm.entrypoints.openai.models.serving import OpenAIServingModels
        from vllm.renderers.online_renderer import OnlineRenderer

        name = name or self._engine.model_config.model
        key = (name, tool_parser)
        if key not in self._servings:
            tools = {"enable_auto_tools": tool_parser is not None, "tool_parser": tool_parser}
            models = OpenAIServingModels(self._client, [BaseModelPath(name=name,
                                                                      model_path=self._engine.model_config.model)])
            renderer = OnlineRenderer(self._engine.model_config, self._engine.renderer, request_logger=None,
                                      chat_template=None, chat_template_content_format="auto", **tools)
            chat = OpenAIServingChat(self._client, models, response_role="assistant", online_renderer=renderer,
                                     request_logger=None, chat_template=None, chat_template_content_format="auto",
                                     **tools)
            completion = OpenAIServingCompletion(self._client, models, online_renderer=renderer,
                                                 request_logger=None)
            self._servings[key] = (chat, completion)
        return self._servings[key]


async def _all_set(events: list[asyncio.Event]) -> None:
    for event in events:
        await event.wait()


def error_body(message: str, code: int) -> str:
    """An error body shaped as vLLM's server shapes one."""
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(code, "InternalServerError")
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def error_message(body: str) -> str:
    """The message of an error body (as ``error_body`` and vLLM's server shape them)."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:500]


def _validation_message(exc: Exception) -> str:
    errors = getattr(exc, "errors", list)()
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors[:5]]
    return "; ".join(parts) or str(exc)
