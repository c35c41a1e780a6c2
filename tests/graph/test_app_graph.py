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


def test_a_file_that_is_not_utf8_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "app.json"
    path.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(ConfigError, match="app.json is not UTF-8 text .*examples/apps"):
        AppGraph.load(path)


def test_an_invalid_file_names_the_file_and_the_fields_without_a_pydantic_dump(tmp_path):
    path = tmp_path / "app.json"
    path.write_text('{"name": "g", "nodes": [{"name": "a"}]}')
    with pytest.raises(ConfigError, match="app.json is not a valid AppGraph .*input_tokens: Field required") as caught:
        AppGraph.load(path)
    assert "errors.pydantic.dev" not in str(caught.value)


@pytest.mark.parametrize(("field", "value"), [("input_tokens", [10, 10**20]), ("max_tokens", 10**8)])
def test_token_counts_past_any_context_window_are_refused(field, value):
    node = {"name": "a", "model": "phi-2", "input_tokens": [10], "max_tokens": 5, field: value}
    with pytest.raises(ConfigError, match="node 'a': tokens of one request .* over the limit of 10,000,000"):
        LLMNode(**node)
