"""What a client hands the engine pool and what it gets back.

``SamplingSpec`` mirrors the ``vllm.SamplingParams`` fields a pipeline sets per request (temperature, top_p,
max_tokens, stop, seed, n, ignore_eos); the pool passes them to vLLM unchanged. A prompt is text, chat
messages (the model's chat template applies), or token ids. ``GenerationResult`` is one request's answer;
a request that fails resolves its future with a ``RequestError`` instead, and no other request notices.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from samullm_lc.errors import ConfigError, SamullmError

ChatMessage = dict[str, str]


class RequestError(SamullmError):
    """One request failed (bad input, an engine that could not run it); the message names the request and why."""


class SamplingSpec(BaseModel):
    """Per-request sampling parameters, passed to ``vllm.SamplingParams`` unchanged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(256, ge=1, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0.0, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] | None = Field(None, description="Stop strings.")
    seed: int | None = Field(None, description="Per-request sampling seed.")
    n: int = Field(1, ge=1, description="Completions per prompt.")
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-sequence token (benchmarks).")

    @classmethod
    def parse(cls, value: SamplingSpec | dict[str, Any] | None) -> SamplingSpec:
        """A spec from a spec, a dict of SamplingParams fields, or None (defaults); ConfigError names bad fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"sampling parameters must be a SamplingSpec or a dict, got {type(value).__name__}")
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'sampling'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(
                f"invalid sampling parameters ({problems}); allowed fields: {', '.join(cls.model_fields)}"
            ) from None

    def vllm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.SamplingParams``."""
        return self.model_dump(exclude_none=True)


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

    @property
    def text(self) -> str:
        """The first completion's text."""
        return self.completions[0].text

    @property
    def output_tokens(self) -> int:
        """Tokens generated over all completions."""
        return sum(c.num_tokens for c in self.completions)


PromptKind = Literal["text", "chat", "tokens"]


@dataclass(slots=True)
class Request:
    """A request inside the pool: what the engine needs, plus bookkeeping (hot path: a slotted dataclass)."""

    id: int
    model: str
    kind: PromptKind
    prompt: str | list[ChatMessage] | np.ndarray
    sampling: SamplingSpec
    key: str = ""
    node: str = ""  # the app-graph node it belongs to (asked for by the client, else assigned by the driver)
    index: int = -1  # its request index within that node
    attempts: int = 0
    submitted_at: float = 0.0

    def prompt_length_hint(self) -> int:
        """Prompt tokens if known without a tokenizer (token ids), else an estimate (4 characters a token)."""
        if self.kind == "tokens":
            return len(self.prompt)  # type: ignore[arg-type]
        if self.kind == "chat":
            return max(1, sum(len(m.get("content", "")) for m in self.prompt) // 4)  # type: ignore[union-attr]
        return max(1, len(self.prompt) // 4)  # type: ignore[arg-type]


def normalise_prompt(
    prompt: str | list[int] | np.ndarray | None, messages: list[ChatMessage] | None
) -> tuple[PromptKind, str | list[ChatMessage] | np.ndarray]:
    """Check a request's prompt (exactly one of text, token ids or chat messages) and tag its kind."""
    if (prompt is None) == (messages is None):
        raise ConfigError("give a request either `prompt` (text or token ids) or `messages` (chat), not both or neither")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise ConfigError("`messages` must be a non-empty list of {'role': ..., 'content': ...} dicts")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                raise ConfigError(f"message {i} must be a dict with 'role' and 'content', got {message!r:.80}")
        return "chat", messages
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigError("the prompt is empty; give at least one non-blank character")
        return "text", prompt
    ids = np.asarray(prompt)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError("a token-id prompt must be a non-empty 1-D sequence of integers")
    return "tokens", ids.astype(np.int32, copy=False)


def content_key(model: str, kind: PromptKind, prompt: Any, sampling: SamplingSpec) -> str:
    """A stable digest of what a request asks: model, prompt and sampling parameters.

    The journal key is this digest plus the request's occurrence (the k-th identical request of a run), so
    identical requests keep distinct results and a resumed run maps them back in the same numbers.
    """
    body: Any = np.asarray(prompt, dtype=np.int64).tolist() if kind == "tokens" else prompt
    text = json.dumps([model, kind, body, sampling.model_dump()], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
