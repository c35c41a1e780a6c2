"""An LLM-Blender-style ensemble: three answerers answer each question side by side, a fuser reads the three
answers and writes one better answer.

    answerer-a ─┐
    answerer-b ─┼─> fuser
    answerer-c ─┘

Run it (tiny random-weight models on this machine's cores, then the GPU models on the GPUs CUDA shows):

    python examples/ensemble_fuser.py --n 16
    python examples/ensemble_fuser.py --gpu --n 512
    python examples/ensemble_fuser.py --trace-only      # the traced graph, no engine

The pipeline is plain LangChain (a RunnableParallel of three ChatOpenAI chains, then a fuser chain); samullm
appears only in ``main``: ``with samullm.offline(models=...): chain.batch(inputs)``.
"""

from __future__ import annotations

import random
from operator import itemgetter
from typing import Any

from common import API_KEY, BASE_URL, WORDS, run_example
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableParallel
from langchain_openai import ChatOpenAI

ANSWERERS = ("ensemble-answerer-a", "ensemble-answerer-b", "ensemble-answerer-c")
FUSER = "ensemble-fuser"

TINY_MODELS = {
    "ensemble-answerer-a": "tiny-llama-s",
    "ensemble-answerer-b": "tiny-llama-m",
    "ensemble-answerer-c": "tiny-qwen2-m",
    "ensemble-fuser": "tiny-llama-m",
}
GPU_MODELS = {
    "ensemble-answerer-a": "meta-llama/Llama-2-7b-chat-hf",
    "ensemble-answerer-b": "meta-llama/Llama-2-13b-chat-hf",
    "ensemble-answerer-c": "meta-llama/Llama-2-70b-chat-hf",
    "ensemble-fuser": "meta-llama/Llama-2-13b-chat-hf",
}


def build() -> Runnable:
    """``{"question"}`` -> the fused answer (str)."""
    answer_prompt = ChatPromptTemplate.from_messages([
        ("system", "You are a helpful assistant. Answer briefly."),
        ("user", "{question}"),
    ])

    def answerer(name: str) -> Runnable:
        llm = ChatOpenAI(model=name, base_url=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=24)
        return answer_prompt | llm | StrOutputParser()

    fuse_prompt = ChatPromptTemplate.from_messages([
        ("system", "Three assistants answered the same question. Merge their answers into one better answer."),
        ("user", "Question: {question}\n\nAnswer A: {a}\n\nAnswer B: {b}\n\nAnswer C: {c}\n\nMerged answer:"),
    ])
    fuser = ChatOpenAI(model=FUSER, base_url=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=32)
    answers = RunnableParallel(
        a=answerer(ANSWERERS[0]),
        b=answerer(ANSWERERS[1]),
        c=answerer(ANSWERERS[2]),
        question=itemgetter("question"),
    )
    return answers | fuse_prompt | fuser | StrOutputParser()


_QUESTIONS = (
    "What is a {0} for?",
    "How would you explain a {0} to a child?",
    "Why does a {0} need a {1}?",
    "Compare a {0} with a {1} in two sentences.",
    "What are the three most important facts about the {0} near the {1}?",
)


def make_inputs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` questions ``{"question": str}``, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [{"question": rng.choice(_QUESTIONS).format(rng.choice(WORDS), rng.choice(WORDS))} for _ in range(n)]


def main(argv: list[str] | None = None) -> list[Any] | None:
    return run_example(build, make_inputs, TINY_MODELS, GPU_MODELS, argv, description=__doc__)


if __name__ == "__main__":
    main()
