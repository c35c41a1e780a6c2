"""Where LangChain's LLM clients meet the pool: at the leaves, installed once per process.

- The OpenAI SDK (``ChatOpenAI``, ``OpenAI``, community ``VLLMOpenAI``): every client sends its final request
  through ``Client.send`` / ``AsyncClient.send`` of ``httpx2`` (the SDK's own since openai 3) or ``httpx``
  (a client the user passed in); both are hooked. Inside an ``offline()`` block a call the SDK
  makes to ``/chat/completions`` or ``/completions`` is answered by the pool with the body vLLM's server
  would send, so LangChain parses it with its own code (messages, metadata, usage, callbacks, caching all
  stay LangChain's). Any other SDK call fails with a clear error: nothing reaches the network.
- Rate limiters attached to chat models let pool calls through inside a block (the pool schedules them).
- Community ``VLLM`` (which loads ``vllm.LLM`` itself): inside a block its ``_generate`` runs with a client
  that hands each prompt to the pool as a completions call with the model's own ``SamplingParams``, and a
  ``VLLM`` constructed inside a block loads no weights (``vllm.LLM`` made there is such a client).

Outside a block every hook calls the original at once.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import threading
from types import ModuleType
from typing import Any

from samullm_lc.errors import RequestError, SamullmError
from samullm_lc.langchain.session import OfflineSession, UnknownClientModelError, active_session
from samullm_lc.runtime.backends.openai_server import error_body

HTTP_MODULES = ("httpx2", "httpx")
"""The HTTP libraries the OpenAI SDK sends through (each hooked if installed)."""
ROUTE_SUFFIXES = (("/chat/completions", "chat.completions"), ("/completions", "completions"))
_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Install every hook, once per process (later calls return at once)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        for name in HTTP_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            _hook_http_module(module)
        _install_rate_limiter_bypass()
        _install_llm_batch()
        _install_batch_tracing()
        _install_community_vllm()
        _installed = True


# ---- the OpenAI SDK ----------------------------------------------------------------------------------------
def _hook_http_module(http: ModuleType) -> None:
    """Route the OpenAI SDK's inference calls made through ``http``'s clients to the active block's pool."""
    sync_send, async_send = http.Client.send, http.AsyncClient.send

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        session = active_session()
        if session is None or not _from_openai_sdk(request):
            return sync_send(self, request, **kwargs)
        prepared = _prepare(http, session, request)
        if not isinstance(prepared, tuple):
            return prepared
        try:
            return _response(http, request, prepared[0].result())
        except RequestError as exc:
            return _error(http, request, 400, str(exc))

    async def asend(self: Any, request: Any, **kwargs: Any) -> Any:
        session = active_session()
        if session is None or not _from_openai_sdk(request):
            return await async_send(self, request, **kwargs)
        prepared = _prepare(http, session, request)
        if not isinstance(prepared, tuple):
            return prepared
        try:
            return _response(http, request, await asyncio.wrap_future(prepared[0]))
        except RequestError as exc:
            return _error(http, request, 400, str(exc))

    http.Client.send = send
    http.AsyncClient.send = asend


def _from_openai_sdk(request: Any) -> bool:
    """A request the OpenAI Python SDK built (it marks every request with its ``X-Stainless`` headers)."""
    return "x-stainless-lang" in request.headers or request.headers.get("user-agent", "").startswith("OpenAI/")


def _prepare(http: ModuleType, session: OfflineSession, request: Any) -> Any:
    """``(future,)`` for an inference call handed to the pool, or the error response for anything else."""
    route = next((name for suffix, name in ROUTE_SUFFIXES if request.url.path.endswith(suffix)), None)
    if route is None or request.method != "POST":
        return _error(http, request, 404, f"samullm offline(): {request.method} {request.url.path} is not served "
                                          "by the engine pool (chat completions and completions are), and "
                                          "nothing inside the block goes to the network")
    try:
        body = json.loads(request.read())
    except ValueError as exc:
        return _error(http, request, 400, f"the request body is not JSON ({exc})")
    if not isinstance(body, dict):
        return _error(http, request, 400, "the request body must be a JSON object")
    try:
        return (session.submit_openai(route, body),)
    except SamullmError as exc:
        status = 404 if isinstance(exc, UnknownClientModelError) else 400
        return _error(http, request, status, str(exc))
    except Exception as exc:  # e.g. measuring a model's profile failed: the call fails, with the reason, as HTTP
        return _error(http, request, 500, f"samullm offline(): {type(exc).__name__}: {exc}")


def _response(http: ModuleType, request: Any, result: Any) -> Any:
    body = result.response or ""
    streaming = body.startswith("data:")
    return http.Response(200, content=body.encode(), request=request,
                         headers={"content-type": "text/event-stream" if streaming else "application/json"})


def _error(http: ModuleType, request: Any, status: int, message: str) -> Any:
    """An error response shaped as vLLM's server shapes one (the SDK raises its own error type for it)."""
    return http.Response(status, content=error_body(message, status).encode(), request=request,
                         headers={"content-type": "application/json"})


# ---- completion models' batch ------------------------------------------------------------------------------
def _install_llm_batch() -> None:
    """Inside a block a completion model's ``batch``/``abatch`` run each input on its own (LangChain's per-input
    path for runnables, on ``max_concurrency`` threads or tasks), as chat models do: every prompt reaches the
    pool at once and a prompt the engine refuses fails only its input. ``BaseLLM.batch`` would instead send
    every prompt in one ``generate`` (one refused prompt fails them all) and, with the block's inherited
    ``max_concurrency``, split and re-enter itself forever."""
    from langchain_core.language_models import BaseLLM
    from langchain_core.runnables import Runnable

    batch, abatch = BaseLLM.batch, BaseLLM.abatch

    def batch_per_input(self: Any, inputs: list[Any], config: Any = None, **kwargs: Any) -> Any:
        if active_session() is None:
            return batch(self, inputs, config, **kwargs)
        return Runnable.batch(self, inputs, config, **kwargs)

    async def abatch_per_input(self: Any, inputs: list[Any], config: Any = None, **kwargs: Any) -> Any:
        if active_session() is None:
            return await abatch(self, inputs, config, **kwargs)
        return await Runnable.abatch(self, inputs, config, **kwargs)

    BaseLLM.batch = batch_per_input  # type: ignore[method-assign]
    BaseLLM.abatch = abatch_per_input  # type: ignore[method-assign]


# ---- every class of a tree ---------------------------------------------------------------------------------
def _patch_class_tree(base: type, names: tuple[str, ...], wrap_method: Any) -> None:
    """Replace the methods ``names`` wherever ``base`` or a subclass defines them, now and for subclasses defined
    later, by ``wrap_method(method, name)``; each method is wrapped once."""
    marker = f"_samullm_wrapped_{'_'.join(names)}"

    def wrap(cls: type) -> None:
        for name in names:
            method = cls.__dict__.get(name)
            if method is None or getattr(method, marker, False):
                continue
            wrapper = wrap_method(method, name)
            setattr(wrapper, marker, True)
            wrapper.__doc__ = method.__doc__
            setattr(cls, name, wrapper)

    def walk(cls: type) -> None:
        wrap(cls)
        for sub in cls.__subclasses__():
            walk(sub)

    walk(base)
    original_init_subclass = base.__dict__.get("__init_subclass__")

    @classmethod  # type: ignore[misc]
    def init_subclass(cls: type, **kwargs: Any) -> None:
        if original_init_subclass is not None:
            original_init_subclass.__func__(cls, **kwargs)
        else:
            super(base, cls).__init_subclass__(**kwargs)
        wrap(cls)

    base.__init_subclass__ = init_subclass  # type: ignore[method-assign]


# ---- rate limiters -----------------------------------------------------------------------------------------
def _install_rate_limiter_bypass() -> None:
    """Wrap ``acquire``/``aacquire`` of every rate limiter class: inside a block they return at once (the pool,
    not a client-side limiter, decides what runs)."""
    from langchain_core.rate_limiters import BaseRateLimiter

    _patch_class_tree(BaseRateLimiter, ("acquire", "aacquire"),
                      lambda method, name: _bypassed(method, asynchronous=name == "aacquire"))


# ---- tracing before a block's first batch ------------------------------------------------------------------
def _install_batch_tracing() -> None:
    """Wrap ``batch``/``abatch`` of every Runnable class: a block's first top-level batch of a pipeline is traced
    on a sample of its inputs before it runs (``OfflineSession.prepare``), so the pool plans the whole app; when
    it returns, no more of the traced graph's calls will come (``finish_intake``)."""
    from langchain_core.runnables import Runnable

    def wrap_method(method: Any, name: str) -> Any:
        if name == "abatch":
            async def abatch(self: Any, inputs: Any, config: Any = None, *args: Any, **kwargs: Any) -> Any:
                session = active_session()
                traced = session is not None and session.wants_trace() and _top_level(config) and \
                    await asyncio.to_thread(session.prepare, self, list(inputs), config)
                try:
                    return await method(self, inputs, config, *args, **kwargs)
                finally:
                    if traced:
                        session.finish_intake()

            return abatch

        def batch(self: Any, inputs: Any, config: Any = None, *args: Any, **kwargs: Any) -> Any:
            session = active_session()
            traced = session is not None and session.wants_trace() and _top_level(config) and \
                session.prepare(self, list(inputs), config)
            try:
                return method(self, inputs, config, *args, **kwargs)
            finally:
                if traced:
                    session.finish_intake()

        return batch

    _patch_class_tree(Runnable, ("batch", "abatch"), wrap_method)


def _top_level(config: Any) -> bool:
    """A batch the user's code calls, not one a pipeline runs inside its own run (whose config carries the
    parent run, explicitly or through LangChain's context variable)."""
    from langchain_core.runnables.config import var_child_runnable_config

    for candidate in [*(config if isinstance(config, list) else [config]), var_child_runnable_config.get()]:
        callbacks = candidate.get("callbacks") if isinstance(candidate, dict) else None
        if getattr(callbacks, "parent_run_id", None) is not None:
            return False
    return True


def _bypassed(method: Any, *, asynchronous: bool) -> Any:
    if asynchronous:
        async def aacquire(self: Any, *args: Any, **kwargs: Any) -> bool:
            if active_session() is not None:
                return True
            return await method(self, *args, **kwargs)

        wrapper: Any = aacquire
    else:
        def acquire(self: Any, *args: Any, **kwargs: Any) -> bool:
            if active_session() is not None:
                return True
            return method(self, *args, **kwargs)

        wrapper = acquire
    return wrapper


# ---- community VLLM ----------------------------------------------------------------------------------------
def _install_community_vllm() -> None:
    """Hook community ``VLLM`` if it is installed. vLLM itself is imported only when a ``VLLM`` is constructed
    (it imports vLLM then anyway), so entering a block stays fast."""
    try:
        from langchain_community.llms.vllm import VLLM
    except ImportError:
        return
    original_generate, original_init = VLLM._generate, VLLM.__init__

    def _generate(self: Any, prompts: list[str], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> Any:
        session = active_session()
        if session is None or isinstance(self.client, PoolCompletionClient):
            return original_generate(self, prompts, stop, run_manager, **kwargs)
        served = self.model_copy(update={"client": PoolCompletionClient(self.model)})
        return original_generate(served, prompts, stop, run_manager, **kwargs)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        _hook_vllm_llm()
        original_init(self, *args, **kwargs)

    VLLM._generate = _generate  # type: ignore[method-assign]
    VLLM.__init__ = __init__  # type: ignore[method-assign]


def _hook_vllm_llm() -> None:
    """``vllm.LLM`` as code that imports it sees it: inside a block, a pool client that loads nothing; outside,
    vLLM's own (once per process)."""
    import vllm

    real_llm = vllm.LLM
    if getattr(real_llm, "_samullm_hook", False):
        return

    class _LLMInsideBlocks(real_llm):  # type: ignore[misc, valid-type]
        _samullm_hook = True

        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            if active_session() is not None:
                return PoolCompletionClient(kwargs.get("model", args[0] if args else ""))
            return real_llm(*args, **kwargs)

    _LLMInsideBlocks.__name__ = _LLMInsideBlocks.__qualname__ = "LLM"
    _LLMInsideBlocks.__module__ = real_llm.__module__
    vllm.LLM = _LLMInsideBlocks


class PoolCompletionClient:
    """What community ``VLLM`` calls as its ``client`` inside a block: ``generate(prompts, sampling_params)``
    sends each prompt to the pool as a completions call carrying those ``SamplingParams`` (as vLLM's server
    fields) and returns objects shaped like ``vllm.RequestOutput`` (``.outputs[i].text``)."""

    def __init__(self, model: str) -> None:
        self.model = model

    def generate(self, prompts: Any, sampling_params: Any = None, **_: Any) -> list[Any]:
        session = active_session()
        if session is None:
            raise SamullmError("this VLLM was made inside a samullm offline() block and loaded no weights; call "
                               "it inside the block (or construct it outside to load its own engine)")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        fields = _completion_fields(sampling_params)
        futures = [session.submit_openai("completions", {"model": self.model, "prompt": p, **fields})
                   for p in prompts]
        outputs = []
        for future in futures:
            answer = json.loads(future.result().response or "{}")
            outputs.append(_RequestOutput([_CompletionOutput(c["text"], c.get("finish_reason"))
                                           for c in answer.get("choices", [])]))
        return outputs


class _CompletionOutput:
    __slots__ = ("finish_reason", "text")

    def __init__(self, text: str, finish_reason: str | None) -> None:
        self.text, self.finish_reason = text, finish_reason


class _RequestOutput:
    __slots__ = ("outputs",)

    def __init__(self, outputs: list[_CompletionOutput]) -> None:
        self.outputs = outputs


_SERVER_FIELDS = ("n", "max_tokens", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
                  "frequency_penalty", "repetition_penalty", "stop", "seed", "ignore_eos", "min_tokens",
                  "stop_token_ids", "include_stop_str_in_output", "skip_special_tokens",
                  "spaces_between_special_tokens", "logprobs")


def _completion_fields(params: Any) -> dict[str, Any]:
    """The ``SamplingParams`` fields community VLLM sets, as completions-request fields (same names in vLLM)."""
    if params is None:
        return {}
    if getattr(params, "use_beam_search", False):
        raise SamullmError("beam search is not served by the engine pool; leave use_beam_search off")
    fields = {}
    for name in _SERVER_FIELDS:
        value = getattr(params, name, None)
        if value is not None and value != []:
            fields[name] = value
    return fields
