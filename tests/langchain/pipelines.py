"""Five LangChain pipelines written the way users write them today: ``ChatOpenAI`` clients pointed at one
OpenAI-compatible vLLM server per model.

Each builder takes ``{model_name: base_url}`` and returns a Runnable; nothing else about the servers is
assumed, so the same builders serve the reference run (real ``vllm serve`` on loopback) and the drop-in's run
(``samullm.offline()`` intercepting the same URLs). ``PIPELINES`` names each builder with the models it needs
(at most two: one server per core). Every input is ``{"text": str}`` from ``make_inputs``.

Sampling is greedy (``temperature=0``) with small ``max_tokens``; the tiny models have random weights, so the
texts are gibberish. What matters is that they are the same text in every run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, TypedDict

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import (
    Runnable,
    RunnableBranch,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
)
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph

SMALL, MEDIUM, QWEN = "tiny-llama-s", "tiny-llama-m", "tiny-qwen2-m"


def chat(urls: Mapping[str, str], model: str, max_tokens: int = 32) -> ChatOpenAI:
    """A greedy chat client for ``model`` at its server, as users configure one for a vLLM server."""
    return ChatOpenAI(model=model, base_url=urls[model], api_key="EMPTY", temperature=0, max_tokens=max_tokens)


# a. Ensemble with a fuser ---------------------------------------------------------------------------------

def ensemble_pipeline(urls: Mapping[str, str]) -> Runnable:
    """Two answerers side by side (RunnableParallel), then a fuser reading both answers."""
    answer = ChatPromptTemplate.from_messages([
        ("system", "You are a helpful assistant. Answer briefly."),
        ("user", "{text}"),
    ])
    fuse = ChatPromptTemplate.from_messages([
        ("system", "Merge two answers into one better answer."),
        ("user", "Question: {text}\n\nAnswer A: {a}\n\nAnswer B: {b}\n\nMerged answer:"),
    ])
    answers = RunnableParallel(
        a=answer | chat(urls, SMALL, 24) | StrOutputParser(),
        b=answer | chat(urls, MEDIUM, 24) | StrOutputParser(),
        text=itemgetter("text"),
    )
    return answers | fuse | chat(urls, MEDIUM, 32) | StrOutputParser()


# b. Router -------------------------------------------------------------------------------------------------

def router_pipeline(urls: Mapping[str, str]) -> Runnable:
    """Short or 'quick' questions go to the small model, the rest to the Qwen2 model (RunnableBranch)."""
    short = ChatPromptTemplate.from_template("Answer in one line: {text}") | chat(urls, SMALL, 16) | StrOutputParser()
    long = (ChatPromptTemplate.from_messages([("system", "Think step by step, then answer."), ("user", "{text}")])
            | chat(urls, QWEN, 40) | StrOutputParser())
    return RunnableBranch(
        (lambda x: len(x["text"]) < 160 or "quick" in x["text"].lower(), short),
        long,
    )


# c. Chain summary ------------------------------------------------------------------------------------------

def split_chunks(text: str, words_per_chunk: int = 30) -> list[str]:
    words = text.split()
    return [" ".join(words[i:i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)] or [text]


def chain_summary_pipeline(urls: Mapping[str, str]) -> Runnable:
    """A running summary over the document's chunks (the previous summary in every prompt), then an evaluator
    model scoring the final summary."""
    summarise = (ChatPromptTemplate.from_template(
        "Summary so far: {summary}\n\nNext part of the document: {chunk}\n\nUpdated summary:")
        | chat(urls, MEDIUM, 32) | StrOutputParser())

    def running_summary(inputs: dict[str, Any]) -> str:
        summary = "(none yet)"
        for chunk in split_chunks(inputs["text"]):
            summary = summarise.invoke({"summary": summary, "chunk": chunk})
        return summary

    evaluate = (ChatPromptTemplate.from_template(
        "Rate this summary from 1 to 10 and say why.\n\nSummary: {summary}\n\nRating:")
        | chat(urls, QWEN, 16) | StrOutputParser())
    return (RunnablePassthrough.assign(summary=RunnableLambda(running_summary))
            | RunnablePassthrough.assign(score=evaluate)
            | RunnableLambda(lambda x: {"summary": x["summary"], "score": x["score"]}))


# d. Map-reduce ---------------------------------------------------------------------------------------------

def split_pieces(inputs: dict[str, Any], k: int = 3) -> list[dict[str, str]]:
    """The text in ``k`` pieces of about equal word counts (fewer if it is short)."""
    words = inputs["text"].split()
    size = max(1, -(-len(words) // k))
    return [{"piece": " ".join(words[i:i + size])} for i in range(0, len(words), size)] or [{"piece": inputs["text"]}]


def map_reduce_pipeline(urls: Mapping[str, str]) -> Runnable:
    """Split into pieces, ``.map()`` the note-taker over them, reduce the notes with another model."""
    note = ChatPromptTemplate.from_template("Key point of: {piece}") | chat(urls, SMALL, 16) | StrOutputParser()
    reduce = (ChatPromptTemplate.from_template("Combine these notes into one answer:\n{notes}")
              | chat(urls, MEDIUM, 32) | StrOutputParser())
    join = RunnableLambda(lambda notes: {"notes": "\n".join(f"- {n}" for n in notes)})
    return RunnableLambda(split_pieces) | note.map() | join | reduce


# e. LangGraph loop -----------------------------------------------------------------------------------------

class DraftState(TypedDict, total=False):
    text: str
    draft: str
    critique: str
    rounds: int


MAX_ROUNDS = 3


def graph_loop_pipeline(urls: Mapping[str, str]) -> Runnable:
    """generate -> critique -> back to generate until the critique approves (or is very short), at most
    ``MAX_ROUNDS`` drafts (a compiled StateGraph)."""
    write = (ChatPromptTemplate.from_template(
        "Task: {text}\nPrevious draft: {draft}\nCritique: {critique}\nWrite an improved draft:")
        | chat(urls, QWEN, 32) | StrOutputParser())
    review = (ChatPromptTemplate.from_template("Critique this draft in one sentence (say OK if it is good): {draft}")
              | chat(urls, SMALL, 16) | StrOutputParser())

    def generate(state: DraftState) -> DraftState:
        draft = write.invoke({"text": state["text"], "draft": state.get("draft", "(none)"),
                              "critique": state.get("critique", "(none)")})
        return {"draft": draft, "rounds": state.get("rounds", 0) + 1}

    def critique(state: DraftState) -> DraftState:
        return {"critique": review.invoke({"draft": state["draft"]})}

    def next_step(state: DraftState) -> str:
        done = (state["rounds"] >= MAX_ROUNDS or "ok" in state["critique"].lower()
                or len(state["critique"].split()) < 3)
        return END if done else "generate"

    graph = StateGraph(DraftState)
    graph.add_node("generate", generate)
    graph.add_node("critique", critique)
    graph.add_edge(START, "generate")
    graph.add_edge("generate", "critique")
    graph.add_conditional_edges("critique", next_step, ["generate", END])
    return graph.compile()


@dataclass(frozen=True)
class Pipeline:
    name: str
    build: Callable[[Mapping[str, str]], Runnable]
    models: tuple[str, ...]


PIPELINES: dict[str, Pipeline] = {p.name: p for p in [
    Pipeline("ensemble", ensemble_pipeline, (SMALL, MEDIUM)),
    Pipeline("router", router_pipeline, (SMALL, QWEN)),
    Pipeline("chain_summary", chain_summary_pipeline, (MEDIUM, QWEN)),
    Pipeline("map_reduce", map_reduce_pipeline, (SMALL, MEDIUM)),
    Pipeline("graph_loop", graph_loop_pipeline, (QWEN, SMALL)),
]}


_WORDS = ("the", "a", "of", "to", "and", "in", "is", "that", "it", "for", "on", "with", "as", "was", "by", "at",
          "from", "this", "be", "are", "or", "an", "model", "data", "run", "engine", "batch", "token", "river",
          "mountain", "city", "paper", "result", "table", "small", "large", "quick", "slow", "question", "answer",
          "summary", "plan", "cost", "time", "memory", "core", "server", "test", "value", "night", "morning",
          "garden", "window", "letter", "market", "story", "history", "music", "light", "water", "stone",
          "bridge", "travel", "people", "question", "reason", "simple", "clear")


def make_inputs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` deterministic inputs ``{"text": ...}``, 4 to ~150 words (short questions to small documents);
    some short ones contain 'quick', so the router takes both branches."""
    rng = random.Random(seed)
    inputs = []
    for i in range(n):
        count = rng.choice([4, 8, 15, 30, 60, 100, 150])
        words = [rng.choice(_WORDS) for _ in range(count)]
        sentences, start = [], 0
        while start < len(words):
            end = start + rng.randint(5, 14)
            sentence = " ".join(words[start:end])
            sentences.append(sentence[:1].upper() + sentence[1:] + ("?" if i % 3 == 0 else "."))
            start = end
        inputs.append({"text": " ".join(sentences)})
    return inputs
