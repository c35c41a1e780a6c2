"""AppGraph: validation, topological order, JSON round-trip."""

from __future__ import annotations

import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.graph.app_graph import AppGraph, LLMNode


def _node(name: str, deps: list[str] | None = None, requests: int = 3) -> LLMNode:
    return LLMNode(name=name, model="phi-2", input_tokens=[10] * requests, max_tokens=5, depends_on=deps or [])


def test_topological_order_is_stable_and_respects_dependencies():
    app = AppGraph(name="g", nodes=[_node("c", ["a", "b"]), _node("a"), _node("b", ["a"])])
    assert app.topological_order == ["a", "b", "c"]
    assert app.downstream("a") == ["c", "b"]
    assert app.models() == ["phi-2"]


def test_json_round_trip(tmp_path):
    app = AppGraph(name="g", nodes=[_node("a"), _node("b", ["a"])], description="two")
    again = AppGraph.load(app.save(tmp_path / "app.json"))
    assert again == app


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([_node("a"), _node("a")], "unique"),
        ([_node("a", ["zz"])], "unknown node"),
        ([_node("a", ["b"]), _node("b", ["a"])], "cycle"),
        ([_node("a"), _node("b", ["a"], requests=4)], "counts must match"),
    ],
)
def test_invalid_graphs_are_clear_errors(nodes, message):
    with pytest.raises(ConfigError, match=message):
        AppGraph(name="bad", nodes=nodes)


def test_node_needs_requests():
    with pytest.raises(ConfigError, match="no requests"):
        LLMNode(name="a", model="phi-2", input_tokens=[], max_tokens=5)


def test_loading_a_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="cannot read app graph"):
        AppGraph.load(tmp_path / "missing.json")
