"""A LangGraph writer-critic loop: a writer drafts, a critic reviews the draft, and the writer revises until the
critic says OK or MAX_ROUNDS drafts have been written (a StateGraph with a conditional edge back to the writer).

    START -> write -> review -> (approved or MAX_ROUNDS drafts?) -> END
               ^                        | no
               └────────────────────────┘

    python examples/langgraph_loop.py --n 16
    python examples/langgraph_loop.py --gpu --n 200
    python examples/langgraph_loop.py --trace-only

Each round's writer prompt holds the previous draft and its critique; the critic reads the new draft.
"""

from __future__ import annotations

import random
from typing import Any, TypedDict

from common import API_KEY, BASE_URL, WORDS, run_example
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph

WRITER, CRITIC = "loop-writer", "loop-critic"

TINY_MODELS = {
    "loop-writer": "tiny-qwen2-m",
    "loop-critic": "tiny-llama-s",
}
GPU_MODELS = {
    "loop-writer": "meta-llama/Llama-2-70b-chat-hf",
    "loop-critic": "meta-llama/Llama-2-7b-chat-hf",
}

MAX_ROUNDS = 3


class Draft(TypedDict, total=False):
    task: str
    draft: str
    critique: str
    rounds: int


def approved(critique: str) -> bool:
    """The critic approves by saying the word OK."""
    return "ok" in (word.strip(".,:;!?\"'()") for word in critique.lower().split())


def build() -> Runnable:
    """``{"task"}`` -> the final state ``{"task", "draft", "critique", "rounds"}``."""
    writer = ChatOpenAI(model=WRITER, base_url=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=32)
    write_chain = ChatPromptTemplate.from_template(
        "Task: {task}\nPrevious draft: {draft}\nCritique of it: {critique}\nWrite an improved draft:"
    ) | writer | StrOutputParser()
    critic = ChatOpenAI(model=CRITIC, base_url=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=16)
    review_chain = ChatPromptTemplate.from_template(
        "Critique this draft in one sentence; say OK if it needs no change.\nDraft: {draft}"
    ) | critic | StrOutputParser()

    def write(state: Draft) -> Draft:
        draft = write_chain.invoke({"task": state["task"], "draft": state.get("draft", "(none)"),
                                    "critique": state.get("critique", "(none)")})
        return {"draft": draft, "rounds": state.get("rounds", 0) + 1}

    def review(state: Draft) -> Draft:
        return {"critique": review_chain.invoke({"draft": state["draft"]})}

    def next_step(state: Draft) -> str:
        return END if approved(state["critique"]) or state["rounds"] >= MAX_ROUNDS else "write"

    graph = StateGraph(Draft)
    graph.add_node("write", write)
    graph.add_node("review", review)
    graph.add_edge(START, "write")
    graph.add_edge("write", "review")
    graph.add_conditional_edges("review", next_step, ["write", END])
    return graph.compile()


_TASKS = ("Write a short note inviting neighbours to the {0} festival.",
          "Write two sentences describing the {0} at night.",
          "Write a product description for a {0} made of {1}.",
          "Write a headline about the new {0} by the {1}.")


def make_inputs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` writing tasks ``{"task": str}``, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [{"task": rng.choice(_TASKS).format(rng.choice(WORDS), rng.choice(WORDS))} for _ in range(n)]


def main(argv: list[str] | None = None) -> list[Any] | None:
    return run_example(build, make_inputs, TINY_MODELS, GPU_MODELS, argv, description=__doc__)


if __name__ == "__main__":
    main()
