"""Map-reduce: each document is split into its paragraphs, a note-taker reads every paragraph (``.map()``, all
paragraphs at once), and a reducer combines the notes into one answer.

    paragraph 1 -> mapreduce-notetaker ─┐
    ...                                 ├─> mapreduce-reducer
    paragraph k -> mapreduce-notetaker ─┘

Documents have 1 to MAX_PIECES paragraphs, so the note-taker makes a different number of calls per input.

    python examples/map_reduce.py --n 16
    python examples/map_reduce.py --gpu --n 300
    python examples/map_reduce.py --trace-only
"""

from __future__ import annotations

import random
from typing import Any

from common import API_KEY, BASE_URL, WORDS, paragraph, run_example
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel
from langchain_openai import ChatOpenAI

NOTETAKER, REDUCER = "mapreduce-notetaker", "mapreduce-reducer"

TINY_MODELS = {
    "mapreduce-notetaker": "tiny-llama-s",
    "mapreduce-reducer": "tiny-llama-m",
}
GPU_MODELS = {
    "mapreduce-notetaker": "meta-llama/Llama-2-7b-chat-hf",
    "mapreduce-reducer": "meta-llama/Llama-2-13b-chat-hf",
}

MAX_PIECES = 5


def split_pieces(inputs: dict[str, Any]) -> list[dict[str, str]]:
    """The document's paragraphs (blank-line separated), each with the question."""
    paragraphs = [p.strip() for p in inputs["document"].split("\n\n") if p.strip()] or [inputs["document"]]
    return [{"question": inputs["question"], "piece": p} for p in paragraphs]


def build() -> Runnable:
    """``{"question", "document"}`` -> the reducer's answer (str)."""
    notetaker = ChatOpenAI(model=NOTETAKER, base_url=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=16)
    note = ChatPromptTemplate.from_template(
        "Question: {question}\nNote the one fact in this passage that helps answer it:\n{piece}"
    ) | notetaker | StrOutputParser()
    reducer = ChatOpenAI(model=REDUCER, base_url=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=32)
    reduce = ChatPromptTemplate.from_template(
        "Question: {question}\nNotes:\n{notes}\n\nAnswer the question from the notes:"
    ) | reducer | StrOutputParser()
    notes = RunnableLambda(split_pieces) | note.map() | RunnableLambda(lambda ns: "\n".join(f"- {n}" for n in ns))
    return RunnableParallel(question=lambda x: x["question"], notes=notes) | reduce


def make_inputs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` inputs ``{"question", "document"}``, documents of 1 to ``MAX_PIECES`` paragraphs."""
    rng = random.Random(seed)
    inputs = []
    for _ in range(n):
        pieces = rng.randint(1, MAX_PIECES)
        document = "\n\n".join(paragraph(rng, rng.randint(15, 45)) for _ in range(pieces))
        inputs.append({"question": f"What does the document say about the {rng.choice(WORDS)}?",
                       "document": document})
    return inputs


def main(argv: list[str] | None = None) -> list[Any] | None:
    return run_example(build, make_inputs, TINY_MODELS, GPU_MODELS, argv, description=__doc__)


if __name__ == "__main__":
    main()
