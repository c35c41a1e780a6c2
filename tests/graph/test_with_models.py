"""AppGraph.with_models: relabelling a traced graph's models."""

from __future__ import annotations

import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.graph.app_graph import AppGraph, LLMNode


def _traced() -> AppGraph:
    return AppGraph(name="t", num_inputs=2, nodes=[
        LLMNode(name="writer", model="tiny-llama-m", input_tokens=[5, 6], max_tokens=8, inputs=[0, 1]),
        LLMNode(name="judge @ step", model="tiny-llama-m", site="judge @ step", input_tokens=[4, 4], max_tokens=8,
                inputs=[0, 1], depends_on=["writer"], upstream_requests={"writer": [[0], [1]]}),
        LLMNode(name="other", model="tiny-qwen2-m", input_tokens=[3, 3], max_tokens=8, inputs=[0, 1]),
    ])


def test_models_are_relabelled_by_node_name_then_client_model_then_model():
    app = _traced().with_models({"writer": "Llama-2-13b-chat-hf", "judge": "Llama-2-70b-chat-hf",
                                 "tiny-qwen2-m": "Mistral-7B-Instruct-v0.2"})
    assert [n.model for n in app.nodes] == ["Llama-2-13b-chat-hf", "Llama-2-70b-chat-hf", "Mistral-7B-Instruct-v0.2"]
    assert app.models() == ["Llama-2-13b-chat-hf", "Llama-2-70b-chat-hf", "Mistral-7B-Instruct-v0.2"]
    assert app.node("judge @ step").upstream_requests == {"writer": [[0], [1]]}
    assert AppGraph.model_validate_json(app.model_dump_json()) == app
    assert _traced().with_models({}).models() == ["tiny-llama-m", "tiny-qwen2-m"]


def test_a_key_naming_nothing_is_a_config_error():
    with pytest.raises(ConfigError, match="name no node"):
        _traced().with_models({"writre": "Llama-2-13b-chat-hf"})
