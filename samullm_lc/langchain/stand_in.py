"""The stand-in model: answers a traced pipeline's LLM calls without an engine.

Tracing runs the user's pipeline on a few inputs to learn its graph; nothing needs real text for that, only
the shape of the calls. The stand-in answers each OpenAI call (the body a client sent a vLLM server) at once
with a response shaped as vLLM's server shapes one: its text opens with a marker naming the call
(``[samullm stand-in 000012]``) followed by filler, of an output length drawn from the model's output-length
distribution and capped by the call's ``max_tokens``. The marker lets the tracer see which earlier outputs a
later prompt contains, and no one can mistake the text for a model's answer. Token counts use the model's own
tokenizer (chat template included, as the server counts them) when its files are here, else four characters
per token.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.runtime.requests import normalise_messages

MARKER_PATTERN = re.compile(r"\[samullm stand-in (\d{6})\]")
FILLER = " ~"
CHARS_PER_TOKEN = 4
"""Tokens are counted as characters / 4 for a model whose tokenizer is not on this machine."""
DEFAULT_MAX_TOKENS = 512
"""The output cap of a call that sets no ``max_tokens`` (a server would go on to the context window)."""


@dataclass(frozen=True, slots=True)
class StandInAnswer:
    """One answered call: the response body, and what the tracer records of it."""

    response: str
    marker: str
    prompt_text: str
    prompt_tokens: int
    output_tokens: int
    text_tokens: int  # the first answer's text counted as part of a later prompt (the marker may exceed a cap)
    max_tokens: int


class TokenCounter:
    """Counts a model's prompt tokens with its tokenizer (loaded once), or by characters if it has none here."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.tokenizer = _load_tokenizer(model)
        self.filler_tokens = max(1, self.count_text(FILLER * 16) // 16) if self.tokenizer else 1

    @property
    def exact(self) -> bool:
        """Whether counts come from the model's own tokenizer."""
        return self.tokenizer is not None

    def count_text(self, text: str) -> int:
        if self.tokenizer is None:
            return max(1, len(text) // CHARS_PER_TOKEN)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_prompt(self, route: str, body: dict[str, Any]) -> tuple[str, int]:
        """The prompt's text (what a later call's prompt is searched in) and its tokens as the server counts."""
        if route == "completions":
            prompt = body.get("prompt", "")
            text = prompt if isinstance(prompt, str) else "\n".join(map(str, prompt))
            return text, self.count_text(text) + (1 if self.tokenizer is not None else 0)
        messages = normalise_messages(body.get("messages"))  # as the pool reads them; a bad message is refused
        text = "\n".join(m["content"] for m in messages)
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            try:
                ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
                return text, len(ids if isinstance(ids, list) else ids["input_ids"])
            except Exception:  # noqa: BLE001 - a template that refuses these roles: count the text
                return text, self.count_text(text) + 4 * len(messages)
        return text, self.count_text(text) + 4 * len(messages)


class StandIn:
    """Answers OpenAI calls with marked synthetic text of sampled lengths (thread-safe)."""

    def __init__(self, *, seed: int = 0, lengths: dict[str, OutputLengthDistribution] | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._lengths = dict(lengths or {})
        self._counters: dict[str, TokenCounter] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._counter_lock = threading.Lock()

    def counter(self, model: str) -> TokenCounter:
        """The model's token counter, its tokenizer loaded once (under the lock: loading is not thread-safe)."""
        with self._counter_lock:
            counter = self._counters.get(model)
            if counter is None:
                counter = self._counters[model] = TokenCounter(model)
        return counter

    def answer(self, route: str, body: dict[str, Any], model: str) -> StandInAnswer:
        """Answer one call for ``model`` (the weights the client's model name maps to)."""
        counter = self.counter(model)
        prompt_text, prompt_tokens = counter.count_prompt(route, body)
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        n = body.get("n") or 1
        distribution = self._lengths.get(model) or OutputLengthDistribution.sharegpt()
        with self._lock:
            lengths = distribution.sample(n, self._rng, max_tokens=int(cap))
            call_id = next(self._ids)
        marker = f"[samullm stand-in {call_id:06d}]"
        marker_tokens = counter.count_text(marker)
        texts = [marker + FILLER * max(0, (int(k) - marker_tokens) // counter.filler_tokens) for k in lengths]
        output_tokens = [max(int(k), 1) for k in lengths]
        finish = ["length" if k >= cap else "stop" for k in output_tokens]
        payload = _response(route, body, texts, finish, prompt_tokens, output_tokens, call_id)
        return StandInAnswer(response=payload, marker=marker, prompt_text=prompt_text, prompt_tokens=prompt_tokens,
                             output_tokens=output_tokens[0], text_tokens=counter.count_text(texts[0]),
                             max_tokens=int(cap))


def _response(route: str, body: dict[str, Any], texts: list[str], finish: list[str], prompt_tokens: int,
              output_tokens: list[int], call_id: int) -> str:
    """The body vLLM's server would send: a JSON object, or server-sent events when the client streams."""
    created, model = int(time.time()), body.get("model", "")
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": sum(output_tokens),
             "total_tokens": prompt_tokens + sum(output_tokens)}
    chat = route == "chat.completions"
    kind, ident = ("chat.completion", f"chatcmpl-standin-{call_id}") if chat else (
        "text_completion", f"cmpl-standin-{call_id}")
    if not body.get("stream"):
        choices = [{"index": i, "logprobs": None, "finish_reason": reason,
                    **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
                   for i, (text, reason) in enumerate(zip(texts, finish, strict=True))]
        return json.dumps({"id": ident, "object": kind, "created": created, "model": model, "choices": choices,
                           "usage": usage})
    kind += ".chunk" if chat else ""
    events = []
    for i, (text, reason) in enumerate(zip(texts, finish, strict=True)):
        delta = {"delta": {"role": "assistant", "content": text}} if chat else {"text": text}
        events.append({"id": ident, "object": kind, "created": created, "model": model,
                       "choices": [{"index": i, "logprobs": None, "finish_reason": reason, **delta}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({"id": ident, "object": kind, "created": created, "model": model, "choices": [],
                       "usage": usage})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def _load_tokenizer(model: str) -> Any:
    """The model's tokenizer from its local files (a tiny model's generated folder, a folder, the hub cache), or
    None: tracing never downloads anything."""
    try:
        from transformers import AutoTokenizer

        from samullm_lc.runtime.vllm_engine import engine_settings_for

        settings, _ = engine_settings_for(model)
        return AutoTokenizer.from_pretrained(settings.model, local_files_only=True)
    except Exception:  # noqa: BLE001 - no local files for this model (or no tokenizer in them): count characters
        return None
