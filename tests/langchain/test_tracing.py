"""Tracing with the stand-in model (no engine): what LangChain gets back, how calls become sites and nodes,
which requests read which, and how ``offline()`` traces a sample before a block's first batch."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel
from langchain_openai import ChatOpenAI, OpenAI
from pipelines import PIPELINES, make_inputs, split_chunks, split_pieces

import samullm_lc as samullm
from samullm_lc.errors import ConfigError
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.langchain.stand_in import MARKER_PATTERN, StandIn
from samullm_lc.langchain.tracing import sample_indices

URL = "http://127.0.0.1:9/v1"  # nothing listens there: a call that escaped the stand-in fails to connect
MODELS = {"tiny-llama-s": "tiny-llama-s", "tiny-llama-m": "tiny-llama-m", "tiny-qwen2-m": "tiny-qwen2-m"}
URLS = dict.fromkeys(MODELS, URL)


def chat(model: str, max_tokens: int = 16) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=URL, api_key="EMPTY", max_retries=0, max_tokens=max_tokens)


def test_the_stand_in_answers_as_a_server_with_marked_text_of_the_sampled_length() -> None:
    stand_in = StandIn(seed=1)
    answer = stand_in.answer("chat.completions", {"model": "c", "max_tokens": 24,
                                                  "messages": [{"role": "user", "content": "Hello there"}]},
                             "tiny-llama-s")
    body = json.loads(answer.response)
    text = body["choices"][0]["message"]["content"]
    assert MARKER_PATTERN.fullmatch(answer.marker) and text.startswith(answer.marker)
    assert 1 <= answer.output_tokens <= 24 and body["usage"]["completion_tokens"] == answer.output_tokens
    counter = stand_in.counter("tiny-llama-s")
    assert counter.exact  # the tiny model's own tokenizer counts, chat template included
    assert abs(counter.count_text(text) - answer.output_tokens) <= counter.count_text(answer.marker)
    assert answer.prompt_tokens > counter.count_text("Hello there")
    second = stand_in.answer("chat.completions", {"model": "c", "messages": [{"role": "user", "content": "x"}]},
                             "tiny-llama-s")
    assert second.marker != answer.marker


def test_langchain_parses_stand_in_answers_for_chat_completion_and_streaming() -> None:
    with samullm.offline(models=MODELS) as session:
        session.begin_tracing()
        message = chat("tiny-llama-s").invoke("hi")
        streamed = "".join(chunk.content for chunk in chat("tiny-llama-m").stream("hi"))
        text = OpenAI(model="tiny-qwen2-m", base_url=URL, api_key="EMPTY", max_retries=0, max_tokens=8).invoke("hi")
        session.end_tracing()
    assert MARKER_PATTERN.match(message.content) and message.usage_metadata["output_tokens"] >= 1
    assert MARKER_PATTERN.match(streamed) and MARKER_PATTERN.match(text)
    assert session.pool is None  # no engine started


def test_a_map_reduce_traces_fan_out_and_fan_in_by_content() -> None:
    inputs = make_inputs(12, seed=3)
    graph = samullm.trace(PIPELINES["map_reduce"].build(URLS), inputs, models=MODELS)
    assert [n.name for n in graph.nodes] == ["tiny-llama-s", "tiny-llama-m"]
    pieces = [len(split_pieces(x)) for x in inputs]
    assert graph.calls_per_input("tiny-llama-s").tolist() == pieces
    assert graph.node("tiny-llama-m").depends_on == ["tiny-llama-s"]
    notes_of = graph.input_of("tiny-llama-s")
    for i, read in enumerate(graph.node("tiny-llama-m").upstream_requests["tiny-llama-s"]):
        assert sorted(read) == np.flatnonzero(notes_of == i).tolist()  # the reduce reads its input's notes, all


def test_a_running_summary_is_one_node_whose_calls_read_the_previous_one() -> None:
    inputs = make_inputs(10, seed=5)
    graph = samullm.trace(PIPELINES["chain_summary"].build(URLS), inputs, models=MODELS)
    summarise, evaluate = graph.node("tiny-llama-m"), graph.node("tiny-qwen2-m")
    assert summarise.chained and graph.calls_per_input("tiny-llama-m").tolist() == [
        len(split_chunks(x["text"])) for x in inputs]
    owner = graph.input_of("tiny-llama-m")
    for i, read in enumerate(summarise.upstream_requests["tiny-llama-m"]):
        earlier = np.flatnonzero(owner[:i] == owner[i])
        assert read == ([int(earlier[-1])] if earlier.size else [])
    last_of = {int(owner[i]): i for i in range(summarise.num_requests)}
    assert [r[0] for r in evaluate.upstream_requests["tiny-llama-m"]] == [last_of[k] for k in range(10)]
    # a call's own tokens exclude what it reads: every summarise call has the same template, so they stay close
    assert max(summarise.input_tokens) < 3 * np.median(summarise.input_tokens) + 200


def test_the_same_model_at_two_steps_is_two_nodes_and_code_between_calls_keeps_the_dependency() -> None:
    shout = RunnableLambda(lambda text: {"q": f"Rewrite in capitals: {text}  (done)"})  # arbitrary code between
    first = ChatPromptTemplate.from_template("Answer: {q}") | chat("tiny-llama-s") | StrOutputParser()
    second = ChatPromptTemplate.from_template("{q}") | chat("tiny-llama-s") | StrOutputParser()
    graph = samullm.trace(first | shout | second, [{"q": "a"}, {"q": "b"}], models=MODELS)
    assert len(graph.nodes) == 2 and all(n.model == "tiny-llama-s" for n in graph.nodes)
    assert all(n.name.startswith("tiny-llama-s @ seq:step:") for n in graph.nodes)
    later = graph.nodes[1]
    assert later.depends_on == [graph.nodes[0].name] and later.upstream_requests[graph.nodes[0].name] == [[0], [1]]


def test_parallel_branches_with_their_own_clients_and_a_loop_graph() -> None:
    graph = samullm.trace(PIPELINES["graph_loop"].build(URLS), make_inputs(6), models=MODELS)
    assert graph.loops == [["tiny-qwen2-m", "tiny-llama-s"]]
    assert graph.calls_per_input("tiny-qwen2-m").tolist() == [3] * 6  # the stand-in's critique never says OK
    assert graph.node("tiny-qwen2-m").site == "tiny-qwen2-m @ node:generate/seq:step:1/seq:step:2"
    again = AppGraph.model_validate_json(graph.model_dump_json())
    assert again == graph


def test_scaling_a_traced_graph_keeps_routing_and_calls_per_input() -> None:
    inputs = make_inputs(16, seed=2)
    graph = samullm.trace(PIPELINES["router"].build(URLS), inputs, models=MODELS)
    short = sum(1 for x in inputs if len(x["text"]) < 160 or "quick" in x["text"].lower()) / len(inputs)
    assert graph.routing_fraction("tiny-llama-s") == pytest.approx(short)
    assert graph.routing_fraction("tiny-qwen2-m") == pytest.approx(1 - short)
    big = graph.scaled(1600)
    assert big.num_inputs == 1600 and big.routing_fraction("tiny-llama-s") == pytest.approx(short)


def test_bad_trace_arguments_are_config_errors() -> None:
    chain = PIPELINES["router"].build(URLS)
    with pytest.raises(ConfigError, match="list of the chain's inputs"):
        samullm.trace(chain, "not a list")
    with pytest.raises(ConfigError, match="at least one input"):
        samullm.trace(chain, [])
    with pytest.raises(ConfigError, match="every traced input failed"):
        samullm.trace(RunnableLambda(lambda x: 1 / 0) | chat("tiny-llama-s"), [1, 2])


def test_sample_indices_spread_over_the_batch() -> None:
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]
    assert sample_indices(512, 8) == [0, 64, 128, 192, 256, 320, 384, 448]


def test_offline_traces_a_sample_before_the_first_top_level_batch_and_plans_the_whole_app() -> None:
    """On the sim backend (GPU-scale models): the first batch is traced on 4 of its 40 inputs, scaled to 40, and
    the pool starts on that graph. The sim backend answers no OpenAI call, so the batch's calls fail: only the
    planning before the run is checked here (tests/examples run it on the real engine)."""
    models = {"tiny-llama-s": "Llama-2-7b-hf", "tiny-llama-m": "Llama-2-13b-hf"}
    chain = PIPELINES["ensemble"].build(URLS)
    inputs = make_inputs(40)
    with samullm.offline(models=models, backend="sim", devices="2xA100-80GB", trace=4, progress=False) as session:
        assert session.pool is None and session.wants_trace()
        inner = RunnableParallel(x=chain)  # a batch inside a pipeline's own run is not a top-level one
        inner.batch(inputs[:2], return_exceptions=True)
        assert session.graph is not None and session.graph.num_inputs == 2  # the outer batch was traced
    with samullm.offline(models=models, backend="sim", devices="2xA100-80GB", trace=4, progress=False) as session:
        chain.batch(inputs, return_exceptions=True)
        graph = session.graph
        assert graph.num_inputs == 40 and "traced from 4 inputs" in graph.description
        assert sorted(graph.models()) == ["Llama-2-13b-hf", "Llama-2-7b-hf"]
        assert session.pool.models and set(graph.models()) <= set(session.pool.models)
        assert session.trace_seconds is not None and session.trace_seconds > 0
    assert sum(session.report().call_sites.values()) > 0


def test_offline_without_tracing_starts_the_pool_at_once() -> None:
    with samullm.offline(models={"m": "Llama-2-7b-hf"}, backend="sim", devices="1xA100-80GB", trace=False,
                         progress=False) as session:
        assert session.pool is not None and session.graph is None and not session.wants_trace()
    with pytest.raises(ConfigError, match="trace must be"):
        samullm.offline(models=["m"], trace=-1)


def test_an_invoke_before_any_batch_serves_without_a_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    with samullm.offline(models={"m": "Llama-2-7b-hf"}, backend="sim", devices="1xA100-80GB",
                         progress=False) as session:
        assert session.pool is None
        with pytest.raises(Exception):  # noqa: B017 - the sim backend answers no OpenAI call; the pool started
            chat("m").invoke("hi")
        assert session.pool is not None and session.graph is None and not session.wants_trace()




def test_trace_plan_save_load_and_offline_starts_the_given_plan(tmp_path) -> None:
    models = {"tiny-llama-s": "Llama-2-7b-hf", "tiny-llama-m": "Llama-2-13b-hf"}
    graph = samullm.trace(PIPELINES["ensemble"].build(URLS), make_inputs(6), models=models).scaled(300)
    plan = samullm.plan(graph, "2xA100-80GB")
    assert plan.estimated_seconds > 0 and {e.plan.model for s in plan.stages for e in s.entries} == set(graph.models())
    assert samullm.Plan.load(plan.save(tmp_path / "plan.json")) == plan
    assert AppGraph.load(graph.save(tmp_path / "app.json")) == graph
    with samullm.offline(models=models, backend="sim", devices="2xA100-80GB", graph=tmp_path / "app.json",
                         plan=tmp_path / "plan.json", progress=False) as session:
        assert session.pool is not None and not session.wants_trace()  # started on the given plan, no trace
        report = session.report()
    assert report.replans and "plan given" in report.replans[0].reason
    with pytest.raises(ConfigError, match="needs the app graph"):
        samullm.offline(models=models, plan=plan)
    with pytest.raises(ConfigError, match="takes an AppGraph"):
        samullm.plan("app.json", "2xA100-80GB")


def test_a_block_entered_again_traces_its_next_batch_afresh() -> None:
    models = {"tiny-llama-s": "Llama-2-7b-hf", "tiny-llama-m": "Llama-2-13b-hf"}
    chain = PIPELINES["ensemble"].build(URLS)
    block = samullm.offline(models=models, backend="sim", devices="2xA100-80GB", trace=2, progress=False)
    for n in (6, 9):
        with block:
            assert block.wants_trace() and block.pool is None
            chain.batch(make_inputs(n), return_exceptions=True)
        assert block.graph.num_inputs == n  # still readable after the block, and traced again on entry
