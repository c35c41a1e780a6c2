"""What a client hands the engine pool and what it gets back.

``SamplingSpec`` mirrors the ``vllm.SamplingParams`` fields a pipeline sets per request (temperature, top_p,
max_tokens, stop, seed, n, ignore_eos) and refuses, at submission, every value the engine would refuse
(vLLM's own checks, and its OpenAI server's int64 seed range: a larger seed passes ``SamplingParams`` and
then overflows inside an engine step). A prompt is text, chat messages (the model's chat template
applies; content may be a list of text parts, joined as vLLM's server joins them), or token ids.
An OpenAI call (``OpenAICall``: the route and the body a client sent to a vLLM server, unchanged) is served
by vLLM's own serving code inside the engine worker, and its result carries the server's response body.
``GenerationResult`` is one request's answer; a request that fails resolves its future with a
``RequestError`` instead, and no other request notices.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from samullm_lc.errors import ConfigError
from samullm_lc.validated import ValidatedModel

ChatMessage = dict[str, Any]

MAX_COMPLETIONS = 128
"""Most completions per request (``n``): OpenAI's API limit, so one request cannot hold the engine."""
MAX_TOKEN_ID = 2**31 - 1
"""Token ids and ``max_tokens`` are int32 inside the engine; larger values are refused, not wrapped."""
SEED_RANGE = (-(2**63), 2**63 - 1)
"""vLLM's OpenAI server accepts int64 seeds; ``SamplingParams`` accepts larger ones that overflow mid-step."""
MAX_TEMPERATURE = 2.0
"""``vllm.SamplingParams`` refuses temperatures above 2."""
GREEDY_TEMPERATURE = 1e-5
"""vLLM samples greedily below this temperature (``_SAMPLING_EPS``), and then allows only n = 1."""
TEXT_PART_KEYS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal",
                  "thinking": "thinking"}
"""Chat content part types that carry text, and the key holding it (as vLLM's chat parser reads them)."""


class SamplingSpec(ValidatedModel):
    """Per-request sampling parameters, passed to ``vllm.SamplingParams`` unchanged."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    error_subject = "sampling parameters"

    @classmethod
    def error_hint(cls) -> str:
        """The fields a spec takes."""
        return f"allowed fields: {', '.join(cls.model_fields)}"

    max_tokens: int = Field(256, ge=1, le=MAX_TOKEN_ID, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: list[str] | None = Field(None, description="Stop strings (a single string is one stop string).")
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1], description="Per-request sampling seed.")
    n: int = Field(1, ge=1, le=MAX_COMPLETIONS, description="Completions per prompt.")
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-sequence token (benchmarks).")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value or None

    @model_validator(mode="after")
    def _greedy_takes_one(self) -> SamplingSpec:
        if self.n > 1 and self.temperature < GREEDY_TEMPERATURE:
            raise ValueError(f"n = {self.n} needs temperature > 0: greedy decoding gives one completion")
        return self

    @classmethod
    def parse(cls, value: SamplingSpec | dict[str, Any] | None) -> SamplingSpec:
        """A spec from a spec, a dict of SamplingParams fields, or None (defaults); ConfigError names bad fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"sampling parameters must be a SamplingSpec or a dict, got {type(value).__name__}")
        return cls.model_validate(value)

    def vllm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.SamplingParams``."""
        return self.model_dump(exclude_none=True)


OPENAI_ROUTES = ("chat.completions", "completions")
"""The OpenAI routes the pool serves (vLLM's ``/v1/chat/completions`` and ``/v1/completions``)."""
OPENAI_MAX_TOKENS_HINT = 2048
"""The planner's output cap for an OpenAI call that sets no max tokens (the engine generates up to the
context limit, as vLLM's server does; the planner only needs a bound for its length samples)."""


class OpenAICall(ValidatedModel):
    """One OpenAI-API call exactly as a client sent it to a vLLM server: the route and the JSON body.

    The engine worker validates and maps it with vLLM's own server code (``openai_server``); here only its
    shape is checked, and the hints the planner needs are read (``sampling_hint``, ``length_hint``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    error_subject = "OpenAI call"

    route: Literal["chat.completions", "completions"]
    body: dict[str, Any]
    tool_parser: str | None = Field(None, description=(
        "vLLM's tool parser for the model's format (vllm serve's --tool-call-parser, with auto tool choice); "
        "None: tool calls are refused, as by a server started without one."))

    @model_validator(mode="after")
    def _json_body(self) -> OpenAICall:
        try:
            json.dumps(self.body, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the body must be a JSON object ({exc})") from None
        needed = "messages" if self.route == "chat.completions" else "prompt"
        if needed not in self.body:
            raise ValueError(f"a {self.route} body needs '{needed}'")
        if self.body.get("use_beam_search"):
            raise ValueError("beam search is not served by the engine pool (each of its rounds starts new engine "
                             "requests outside the pool's schedule); leave use_beam_search off")
        return self

    def sampling_hint(self) -> SamplingSpec:
        """Max tokens and completions as the planner should assume them (the engine applies the body itself)."""
        body = self.body
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        n = body.get("n")
        return SamplingSpec.model_construct(
            max_tokens=limit if isinstance(limit, int) and limit > 0 else OPENAI_MAX_TOKENS_HINT,
            n=n if isinstance(n, int) and 0 < n <= MAX_COMPLETIONS else 1,
        )

    def length_hint(self) -> int:
        """Prompt tokens, estimated at 4 characters a token."""
        if self.route == "completions":
            prompt = self.body.get("prompt")
            return max(1, len(prompt) // 4 if isinstance(prompt, str) else len(json.dumps(prompt)) // 4)
        return max(1, len(json.dumps(self.body.get("messages"), ensure_ascii=False)) // 4)


class Completion(BaseModel):
    """One of a request's ``n`` completions."""

    text: str
    num_tokens: int
    finish_reason: str | None = None


class GenerationResult(BaseModel):
    """The answer to one request."""

    model: str
    completions: list[Completion]
    prompt_tokens: int
    from_journal: bool = Field(False, description="Read back from the journal of an earlier run, not recomputed.")
    response: str | None = Field(None, description="For an OpenAI call: the body vLLM's server would answer with "
                                 "(JSON, or the event stream of a streaming call).")

    @property
    def text(self) -> str:
        """The first completion's text."""
        return self.completions[0].text

    @property
    def output_tokens(self) -> int:
        """Tokens generated over all completions."""
        return sum(c.num_tokens for c in self.completions)


PromptKind = Literal["text", "chat", "tokens", "openai"]


@dataclass(slots=True)
class Request:
    """A request inside the pool: what the engine needs, plus bookkeeping (hot path: a slotted dataclass)."""

    id: int
    model: str
    kind: PromptKind
    prompt: str | list[ChatMessage] | np.ndarray | dict[str, Any]  # an OpenAI call: {"route": ..., "body": ...}
    sampling: SamplingSpec
    key: str = ""
    node: str = ""  # the app-graph node it belongs to (asked for by the client, else assigned by the driver)
    index: int = -1  # its request index within that node
    attempts: int = 0

    def prompt_length_hint(self) -> int:
        """Prompt tokens if known without a tokenizer (token ids), else an estimate (4 characters a token)."""
        if self.kind == "tokens":
            return len(self.prompt)  # type: ignore[arg-type]
        if self.kind == "openai":
            return OpenAICall.model_construct(**self.prompt).length_hint()  # type: ignore[arg-type]
        if self.kind == "chat":
            return max(1, sum(len(m.get("content", "")) for m in self.prompt) // 4)  # type: ignore[union-attr]
        return max(1, len(self.prompt) // 4)  # type: ignore[arg-type]


def normalise_prompt(
    prompt: str | list[int] | np.ndarray | None, messages: list[ChatMessage] | None,
    openai: OpenAICall | dict[str, Any] | None = None,
) -> tuple[PromptKind, str | list[ChatMessage] | np.ndarray | dict[str, Any]]:
    """Check a request's prompt (exactly one of text, token ids, chat messages or an OpenAI call) and tag its
    kind."""
    if sum(x is not None for x in (prompt, messages, openai)) != 1:
        raise ConfigError("give a request exactly one of `prompt` (text or token ids), `messages` (chat) or "
                          "`openai` (an OpenAI-API call)")
    if openai is not None:
        call = _openai_call(openai)
        return "openai", call.model_dump(exclude_defaults=True)
    if messages is not None:
        return "chat", normalise_messages(messages)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigError("the prompt is empty; give at least one non-blank character")
        return "text", prompt
    if isinstance(prompt, (bytes, dict, set)):
        raise ConfigError(f"a prompt is text or a sequence of token ids, got {type(prompt).__name__}")
    try:
        ids = np.asarray(prompt)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"a token-id prompt must be a flat sequence of integers ({exc})") from None
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError("a token-id prompt must be a non-empty 1-D sequence of integers")
    if ids.min() < 0 or ids.max() > MAX_TOKEN_ID:
        raise ConfigError(f"token ids must lie in [0, {MAX_TOKEN_ID}] (the model's vocabulary), "
                          f"got {int(ids.min())}..{int(ids.max())}")
    return "tokens", ids.astype(np.int32)


def _openai_call(value: OpenAICall | dict[str, Any]) -> OpenAICall:
    if isinstance(value, OpenAICall):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"`openai` must be an OpenAICall or a dict with 'route' and 'body', got "
                          f"{type(value).__name__}")
    return OpenAICall.model_validate(value)


def normalise_messages(messages: Any) -> list[ChatMessage]:
    """Chat messages as the engine's chat template takes them: a role and text content each.

    Content is a string or a list of parts (OpenAI / LangChain content blocks): text parts are joined with
    newlines, as vLLM's server does for text-only models; a media part is refused (the pool's models read
    text). Other message keys (``name``, ``tool_call_id``, ...) pass through if they are JSON values.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConfigError("`messages` must be a non-empty list of {'role': ..., 'content': ...} dicts")
    normalised = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise ConfigError(f"message {i} must be a dict with 'role' and 'content', got {message!r:.80}")
        role = message["role"]
        if not isinstance(role, str) or not role:
            raise ConfigError(f"message {i}: 'role' must be a non-empty string such as 'user', got {role!r:.40}")
        extra = {k: v for k, v in message.items() if k not in ("role", "content")}
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"message {i}: its other fields must be JSON values ({exc})") from None
        normalised.append({**extra, "role": role, "content": _message_text(i, message["content"])})
    return normalised


def _message_text(index: int, content: Any) -> str:
    """A message's content as one string (see ``normalise_messages``)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, (list, tuple)):
        raise ConfigError(f"message {index}: 'content' must be a string or a list of text parts, "
                          f"got {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind not in TEXT_PART_KEYS:
            raise ConfigError(
                f"message {index}, content part {j}: type {kind!r:.40} is not a text part; the pool's models read "
                f"text only, so give parts of type {sorted(TEXT_PART_KEYS)} (or plain strings)")
        text = part.get(TEXT_PART_KEYS[kind])
        if text is None:
            continue  # vLLM skips a text part without text
        if not isinstance(text, str):
            raise ConfigError(f"message {index}, content part {j}: {TEXT_PART_KEYS[kind]!r} must be a string, "
                              f"got {type(text).__name__}")
        texts.append(text)
    return "\n".join(texts)


def content_key(model: str, kind: PromptKind, prompt: Any, sampling: SamplingSpec) -> str:
    """A stable digest of what a request asks: model, prompt and sampling parameters.

    The journal key is this digest plus the request's occurrence (the k-th identical request of a run), so
    identical requests keep distinct results and a resumed run maps them back in the same numbers.
    """
    body: Any = np.asarray(prompt, dtype=np.int64).tolist() if kind == "tokens" else prompt
    text = json.dumps([model, kind, body, sampling.model_dump()], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
