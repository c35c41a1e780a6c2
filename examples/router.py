"""A router: each question goes to one of three models by a fixed rule on its text (a RunnableBranch).

    questions asking to prove, derive, code or debug  -> router-expert   (the strongest model)
    other short questions (at most SHORT_WORDS words) -> router-quick    (the smallest model)
    everything else                                   -> router-general

The rule reads only the input, so the share of inputs each model gets is known before the run (``route``).

    python examples/router.py --n 16
    python examples/router.py --gpu --n 1000
    python examples/router.py --trace-only
"""

from __future__ import annotations

import random
from typing import Any

from common import API_KEY, BASE_URL, WORDS, paragraph, run_example
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableBranch
from langchain_openai import ChatOpenAI

QUICK, GENERAL, EXPERT = "router-quick", "router-general", "router-expert"

TINY_MODELS = {
    "router-quick": "tiny-llama-s",
    "router-general": "tiny-llama-m",
    "router-expert": "tiny-qwen2-m",
}
GPU_MODELS = {
    "router-quick": "meta-llama/Llama-2-7b-chat-hf",
    "router-general": "meta-llama/Llama-2-13b-chat-hf",
    "router-expert": "meta-llama/Llama-2-70b-chat-hf",
}

EXPERT_KEYWORDS = ("prove", "derive", "code", "debug")
SHORT_WORDS = 12


def route(inputs: dict[str, Any]) -> str:
    """The client model name the question goes to."""
    words = inputs["question"].lower().replace("?", " ").replace(".", " ").split()
    if any(keyword in words for keyword in EXPERT_KEYWORDS):
        return EXPERT
    if len(words) <= SHORT_WORDS:
        return QUICK
    return GENERAL


def build() -> Runnable:
    """``{"question"}`` -> the answer of the model the question was routed to (str)."""
    def llm(name: str, max_tokens: int) -> ChatOpenAI:
        return ChatOpenAI(model=name, base_url=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=max_tokens)

    quick = ChatPromptTemplate.from_template("Answer in one line: {question}") | llm(QUICK, 16) | StrOutputParser()
    general = (ChatPromptTemplate.from_messages([("system", "You are a helpful assistant."), ("user", "{question}")])
               | llm(GENERAL, 32) | StrOutputParser())
    expert = (ChatPromptTemplate.from_messages([("system", "Think step by step, then answer."), ("user", "{question}")])
              | llm(EXPERT, 48) | StrOutputParser())
    return RunnableBranch(
        (lambda x: route(x) == EXPERT, expert),
        (lambda x: route(x) == QUICK, quick),
        general,
    )


def make_inputs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` questions ``{"question": str}``: about a quarter ask for a proof or code, the others are short
    questions or longer ones with some context."""
    rng = random.Random(seed)
    inputs = []
    for _ in range(n):
        noun, other = rng.choice(WORDS), rng.choice(WORDS)
        kind = rng.random()
        if kind < 0.25:
            question = rng.choice([f"Prove that every {noun} has a {other}.",
                                   f"Write code that simulates a {noun}.",
                                   f"Derive the cost of a {noun} from the cost of a {other}.",
                                   f"Debug this: the {noun} never reaches the {other}."])
        elif kind < 0.6:
            question = rng.choice([f"What is a {noun}?", f"Where is the nearest {noun}?",
                                   f"Is a {noun} bigger than a {other}?"])
        else:
            question = f"{paragraph(rng, rng.randint(12, 40))} Given this, what happens to the {noun}?"
        inputs.append({"question": question})
    return inputs


def main(argv: list[str] | None = None) -> list[Any] | None:
    return run_example(build, make_inputs, TINY_MODELS, GPU_MODELS, argv, description=__doc__)


if __name__ == "__main__":
    main()
