"""A running summary: each document is cut into chunks of WORDS_PER_CHUNK words, a summariser reads the chunks
in order (one call per chunk, each prompt holding the summary so far), then an evaluator rates the final summary.

    summary-writer(chunk 1) -> summary-writer(chunk 2) -> ... -> summary-writer(chunk k) -> summary-evaluator

Documents have 1 to MAX_CHUNKS chunks, so the summariser makes a different number of calls per input.

    python examples/chain_summary.py --n 16
    python examples/chain_summary.py --gpu --n 200
    python examples/chain_summary.py --trace-only
"""

from __future__ import annotations

import random
from typing import Any

from common import API_KEY, BASE_URL, WORDS, paragraph, run_example
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_openai import ChatOpenAI

SUMMARISER, EVALUATOR = "summary-writer", "summary-evaluator"

TINY_MODELS = {
    "summary-writer": "tiny-llama-m",
    "summary-evaluator": "tiny-qwen2-m",
}
GPU_MODELS = {
    "summary-writer": "meta-llama/Llama-2-13b-chat-hf",
    "summary-evaluator": "meta-llama/Llama-2-70b-chat-hf",
}

WORDS_PER_CHUNK = 40
MAX_CHUNKS = 5


def split_chunks(document: str) -> list[str]:
    """The document in chunks of ``WORDS_PER_CHUNK`` words (the last one shorter)."""
    words = document.split()
    return [" ".join(words[i:i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)] or [document]


def build() -> Runnable:
    """``{"title", "document"}`` -> ``{"summary", "rating"}``."""
    summariser = ChatOpenAI(model=SUMMARISER, base_url=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=32)
    summarise = ChatPromptTemplate.from_template(
        "You are summarising the document '{title}'.\n\nSummary so far: {summary}\n\n"
        "Next part of the document: {chunk}\n\nUpdated summary:") | summariser | StrOutputParser()

    def running_summary(inputs: dict[str, Any]) -> str:
        summary = "(nothing yet)"
        for chunk in split_chunks(inputs["document"]):
            summary = summarise.invoke({"title": inputs["title"], "summary": summary, "chunk": chunk})
        return summary

    evaluator = ChatOpenAI(model=EVALUATOR, base_url=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=16)
    evaluate = ChatPromptTemplate.from_template(
        "Rate this summary of '{title}' from 1 to 10 and say why.\n\nSummary: {summary}\n\nRating:"
    ) | evaluator | StrOutputParser()
    return (RunnablePassthrough.assign(summary=RunnableLambda(running_summary))
            | RunnablePassthrough.assign(rating=evaluate)
            | RunnableLambda(lambda x: {"summary": x["summary"], "rating": x["rating"]}))


def make_inputs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` documents ``{"title", "document"}`` of 1 to ``MAX_CHUNKS`` chunks, deterministic in ``seed``."""
    rng = random.Random(seed)
    inputs = []
    for _ in range(n):
        words = rng.randint(WORDS_PER_CHUNK // 2, MAX_CHUNKS * WORDS_PER_CHUNK)
        inputs.append({"title": f"A report on the {rng.choice(WORDS)}", "document": paragraph(rng, words)})
    return inputs


def main(argv: list[str] | None = None) -> list[Any] | None:
    return run_example(build, make_inputs, TINY_MODELS, GPU_MODELS, argv, description=__doc__)


if __name__ == "__main__":
    main()
