"""The traced graph of every example matches its true structure.

For each example the true structure is worked out from its inputs alone: which client models are called, with
which weights and ``max_tokens``, how often per input (the router's rule, the documents' chunks and paragraphs,
the loop's rounds), and which earlier calls each call's prompt holds. ``samullm.trace`` runs the example on the
stand-in model (no engine) and must record exactly that: node names (the client model names), models,
``depends_on`` edges, calls per input, routing fractions and the request-level reads. The stand-in's text never
says OK, so the writer-critic loop always runs ``MAX_ROUNDS`` rounds.

Requests are compared by (input, ordinal): ordinal k is the node's k-th request for that input in the graph's
order, which for calls chained at one site (a running summary, a loop) is their call order.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import samullm_lc as samullm

N = 16
GRAPHS = Path(__file__).resolve().parents[2] / "examples" / "graphs"

Request = tuple[int, int]
"""(pipeline input, ordinal among the node's requests for that input)."""


@dataclass
class NodeTruth:
    """What one node of an example's graph must be."""

    model: str
    max_tokens: int
    calls: list[int]  # per pipeline input
    reads: dict[Request, dict[str, set[Request]]] = field(default_factory=dict)  # every request; {} reads nothing

    @property
    def depends_on(self) -> set[str]:
        return {upstream for read in self.reads.values() for upstream in read}


def node(models: dict[str, str], name: str, max_tokens: int, calls: list[int],
         reads: Any = lambda i, k: {}) -> NodeTruth:
    """A node whose request (i, k) reads ``reads(i, k)`` ({upstream: requests}; empty ones dropped)."""
    table = {(i, k): {u: set(r) for u, r in reads(i, k).items() if r} for i, count in enumerate(calls)
             for k in range(count)}
    return NodeTruth(model=models[name], max_tokens=max_tokens, calls=calls, reads=table)


# ---- the true structure of each example, from its inputs ------------------------------------------------------

def ensemble_truth(inputs: list[dict[str, Any]]) -> dict[str, NodeTruth]:
    import ensemble_fuser as ex

    one = [1] * len(inputs)
    truth = {name: node(ex.TINY_MODELS, name, 24, one) for name in ex.ANSWERERS}
    truth[ex.FUSER] = node(ex.TINY_MODELS, ex.FUSER, 32, one,
                           lambda i, k: {name: {(i, 0)} for name in ex.ANSWERERS})
    return truth


def router_truth(inputs: list[dict[str, Any]]) -> dict[str, NodeTruth]:
    import router as ex

    routes = [ex.route(x) for x in inputs]
    max_tokens = {ex.QUICK: 16, ex.GENERAL: 32, ex.EXPERT: 48}
    return {name: node(ex.TINY_MODELS, name, max_tokens[name], [int(r == name) for r in routes])
            for name in max_tokens if name in routes}


def chain_summary_truth(inputs: list[dict[str, Any]]) -> dict[str, NodeTruth]:
    import chain_summary as ex

    chunks = [math.ceil(len(x["document"].split()) / ex.WORDS_PER_CHUNK) for x in inputs]
    return {
        ex.SUMMARISER: node(ex.TINY_MODELS, ex.SUMMARISER, 32, chunks,
                            lambda i, k: {ex.SUMMARISER: {(i, k - 1)} if k else set()}),
        ex.EVALUATOR: node(ex.TINY_MODELS, ex.EVALUATOR, 16, [1] * len(inputs),
                           lambda i, k: {ex.SUMMARISER: {(i, chunks[i] - 1)}}),
    }


def map_reduce_truth(inputs: list[dict[str, Any]]) -> dict[str, NodeTruth]:
    import map_reduce as ex

    pieces = [len([p for p in x["document"].split("\n\n") if p.strip()]) for x in inputs]
    return {
        ex.NOTETAKER: node(ex.TINY_MODELS, ex.NOTETAKER, 16, pieces),
        ex.REDUCER: node(ex.TINY_MODELS, ex.REDUCER, 32, [1] * len(inputs),
                         lambda i, k: {ex.NOTETAKER: {(i, j) for j in range(pieces[i])}}),
    }


def langgraph_loop_truth(inputs: list[dict[str, Any]]) -> dict[str, NodeTruth]:
    import langgraph_loop as ex

    rounds = [ex.MAX_ROUNDS] * len(inputs)  # the stand-in never says OK
    return {
        ex.WRITER: node(ex.TINY_MODELS, ex.WRITER, 32, rounds,  # the previous draft and its critique
                        lambda i, k: {ex.WRITER: {(i, k - 1)}, ex.CRITIC: {(i, k - 1)}} if k else {}),
        ex.CRITIC: node(ex.TINY_MODELS, ex.CRITIC, 16, rounds, lambda i, k: {ex.WRITER: {(i, k)}}),
    }


def batch_eval_truth(inputs: list[dict[str, Any]]) -> dict[str, NodeTruth]:
    import batch_eval as ex

    one = [1] * len(inputs)
    return {ex.ANSWERER: node(ex.TINY_MODELS, ex.ANSWERER, 24, one),
            ex.JUDGE: node(ex.TINY_MODELS, ex.JUDGE, 16, one, lambda i, k: {ex.ANSWERER: {(i, 0)}})}


PARTS = {"ensemble": ensemble_truth, "router": router_truth, "chain_summary": chain_summary_truth,
         "map_reduce": map_reduce_truth, "langgraph_loop": langgraph_loop_truth}
"""The mixed app's input keys and the truth of the pipeline each key feeds."""


def mixed_truth(inputs: list[dict[str, Any]]) -> dict[str, NodeTruth]:
    import mixed as ex

    assert set(ex.PIPELINES) == set(PARTS)
    return {name: truth for key, part in PARTS.items() for name, truth in part([x[key] for x in inputs]).items()}


TRUTHS = {"ensemble_fuser": ensemble_truth, "router": router_truth, "chain_summary": chain_summary_truth,
          "map_reduce": map_reduce_truth, "langgraph_loop": langgraph_loop_truth, "mixed": mixed_truth,
          "batch_eval": batch_eval_truth}


# ---- what a graph says, in the same terms ---------------------------------------------------------------------

def ordinals(inputs: list[int]) -> list[int]:
    """For each request, how many requests of the node for the same input come before it."""
    seen: dict[int, int] = {}
    result = []
    for i in inputs:
        result.append(seen.get(i, 0))
        seen[i] = result[-1] + 1
    return result


def observed(graph: samullm.AppGraph, name: str) -> NodeTruth:
    """The node as the graph has it, requests named by (input, ordinal)."""
    found = graph.node(name)
    keys = list(zip(graph.input_of(name).tolist(), ordinals(graph.input_of(name).tolist()), strict=True))
    reads: dict[Request, dict[str, set[Request]]] = {key: {} for key in keys}
    for upstream, indices in graph.request_reads(name):
        upstream_inputs = graph.input_of(upstream).tolist()
        upstream_keys = list(zip(upstream_inputs, ordinals(upstream_inputs), strict=True))
        for request, index in enumerate(indices.tolist()):
            if index >= 0:
                reads[keys[request]].setdefault(upstream, set()).add(upstream_keys[index])
    return NodeTruth(model=found.model, max_tokens=found.max_tokens, calls=graph.calls_per_input(name).tolist(),
                     reads=reads)


def example(name: str) -> Any:
    return importlib.import_module(name)


_traced: dict[str, samullm.AppGraph] = {}


def traced(name: str) -> samullm.AppGraph:
    """The example traced on ``N`` of its inputs with its tiny models (once per test session)."""
    if name not in _traced:
        ex = example(name)
        _traced[name] = samullm.trace(ex.build(), ex.make_inputs(N), models=ex.TINY_MODELS)
    return _traced[name]


def truth(name: str) -> dict[str, NodeTruth]:
    return TRUTHS[name](example(name).make_inputs(N))


# ---- the acceptance tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TRUTHS)
def test_the_inputs_exercise_every_shape(name):
    """The truths are not degenerate: every route is taken and not by all, chunk and piece counts vary."""
    expected = truth(name)
    for node_name, node_truth in expected.items():
        assert sum(node_truth.calls) > 0, node_name
    if name in ("router", "mixed"):
        import router

        for route in (router.QUICK, router.GENERAL, router.EXPERT):
            assert 0 < sum(expected[route].calls) < N, route
    if name in ("chain_summary", "map_reduce"):
        node_name = "summary-writer" if name == "chain_summary" else "mapreduce-notetaker"
        assert len(set(expected[node_name].calls)) >= 3


@pytest.mark.parametrize("name", TRUTHS)
def test_nodes_are_the_client_names_with_their_models(name):
    graph, expected = traced(name), truth(name)
    assert graph.num_inputs == N
    assert sorted(n.name for n in graph.nodes) == sorted(expected)
    assert {n.name: n.model for n in graph.nodes} == {k: v.model for k, v in expected.items()}
    assert {n.name: n.max_tokens for n in graph.nodes} == {k: v.max_tokens for k, v in expected.items()}


@pytest.mark.parametrize("name", TRUTHS)
def test_edges(name):
    graph, expected = traced(name), truth(name)
    got = {n.name: sorted(n.depends_on) for n in graph.nodes}
    want = {k: sorted(v.depends_on - {k}) for k, v in expected.items()}
    assert got == want
    chained = {n.name for n in graph.nodes if n.chained}
    assert chained == {k for k, v in expected.items() if k in v.depends_on}


@pytest.mark.parametrize("name", TRUTHS)
def test_calls_per_input(name):
    graph, expected = traced(name), truth(name)
    assert {k: graph.calls_per_input(k).tolist() for k in expected} == {k: v.calls for k, v in expected.items()}


@pytest.mark.parametrize("name", TRUTHS)
def test_routing_fractions(name):
    graph, expected = traced(name), truth(name)
    got = {k: graph.routing_fraction(k) for k in expected}
    assert got == pytest.approx({k: sum(c > 0 for c in v.calls) / N for k, v in expected.items()})


@pytest.mark.parametrize("name", TRUTHS)
def test_request_reads(name):
    """Every request reads exactly the earlier calls its prompt holds: a fuser its input's answers, a reduce its
    input's map calls, summary call k call k-1 of the same input, the evaluator the last summary call."""
    graph, expected = traced(name), truth(name)
    for node_name, node_truth in expected.items():
        got = observed(graph, node_name).reads
        wrong = {key: (got.get(key), want) for key, want in node_truth.reads.items() if got.get(key) != want}
        assert not wrong, f"{node_name}: (input, call) -> (traced, true) reads: {wrong}"
        assert set(got) == set(node_truth.reads), node_name


@pytest.mark.parametrize("name", TRUTHS)
def test_saved_graph_matches_the_truth(name):
    """examples/graphs/<example>.json (written by examples/trace_all.py at N inputs) has the true structure."""
    path = GRAPHS / f"{name}.json"
    assert path.exists(), f"{path} is missing: run .venv/bin/python examples/trace_all.py"
    graph, expected = samullm.AppGraph.load(path), truth(name)
    assert graph.num_inputs == N
    assert {n.name: n.model for n in graph.nodes} == {k: v.model for k, v in expected.items()}
    for node_name, node_truth in expected.items():
        got = observed(graph, node_name)
        assert got.calls == node_truth.calls, node_name
        assert got.reads == node_truth.reads, node_name


# ---- a request's own input tokens -----------------------------------------------------------------------------

def prompt_tokens(model: str, content: str) -> int:
    """Tokens of a one-message chat prompt as the server counts them (the model's tokenizer and chat template)."""
    from samullm_lc.langchain.stand_in import TokenCounter

    return TokenCounter(model).count_prompt("chat.completions", {"messages": [{"role": "user", "content": content}]})[1]


def test_own_input_tokens_leave_out_the_draft_a_critique_reads():
    """The critic's prompt is a fixed text plus the draft: without the draft, every request has the same tokens."""
    import langgraph_loop as ex

    graph = traced("langgraph_loop")
    want = prompt_tokens(ex.TINY_MODELS[ex.CRITIC],
                         "Critique this draft in one sentence; say OK if it needs no change.\nDraft: ")
    got = graph.node(ex.CRITIC).input_tokens
    assert [t for t in got if abs(t - want) > 1] == []


def test_own_input_tokens_leave_out_the_notes_a_reduce_reads():
    """The reducer's prompt less its notes: the question and the template (one token of slack per note)."""
    import map_reduce as ex

    inputs, graph = ex.make_inputs(N), traced("map_reduce")
    got = graph.node(ex.REDUCER).input_tokens
    wrong = {}
    for request, i in enumerate(graph.input_of(ex.REDUCER).tolist()):
        pieces = len(ex.split_pieces(inputs[i]))
        notes = "\n".join("- " for _ in range(pieces))
        want = prompt_tokens(ex.TINY_MODELS[ex.REDUCER], f"Question: {inputs[i]['question']}\nNotes:\n{notes}\n\n"
                                                         "Answer the question from the notes:")
        if abs(got[request] - want) > pieces:
            wrong[i] = (got[request], want)
    assert wrong == {}, "input: (traced own tokens, prompt tokens without the notes)"
