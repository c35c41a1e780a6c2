"""Small applications for planner tests: a few catalogue models, fixed lengths, tens of requests."""

from __future__ import annotations

import pytest

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.graph.app_graph import AppGraph, LLMNode

SMALL = "Mistral-7B-Instruct-v0.2"
OTHER_SMALL = "Llama-2-7b-chat-hf"
TINY = "phi-2"
BIG = "Llama-2-70b-chat-hf"


def make_app(name: str, nodes: list[tuple[str, str, list[str]]], *, requests: int = 64, prompt: int = 200,
             output: int = 120, outputs: dict[str, int] | None = None) -> AppGraph:
    """An app of (node name, model, upstream names) nodes: ``prompt`` tokens in, ``output`` (or per node) out."""
    lengths = {node: (outputs or {}).get(node, output) for node, _, _ in nodes}
    return AppGraph(
        name=name,
        nodes=[
            LLMNode(name=node, model=model, input_tokens=[prompt] * requests, max_tokens=lengths[node],
                    depends_on=deps, output_lengths=OutputLengthDistribution.fixed(lengths[node]))
            for node, model, deps in nodes
        ],
    )


@pytest.fixture
def two_independent() -> AppGraph:
    """Two unrelated 7B models, one node each."""
    return make_app("two", [("a", SMALL, []), ("b", OTHER_SMALL, [])])


@pytest.fixture
def chain_app() -> AppGraph:
    """Model A's answers feed model B."""
    return make_app("chain", [("first", SMALL, []), ("second", OTHER_SMALL, ["first"])])


@pytest.fixture
def fused_chain() -> AppGraph:
    """One model applied three times in a row (a summariser over chunks)."""
    return make_app("fused", [("c0", SMALL, []), ("c1", SMALL, ["c0"]), ("c2", SMALL, ["c1"])], requests=48)
