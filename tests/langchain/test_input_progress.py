"""What a traced node can still expect, from the real inputs' progress (no engine, no LangChain)."""

from __future__ import annotations

from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.langchain.input_progress import InputProgress


def _map_reduce(notes_per_input: list[int]) -> AppGraph:
    """A note-taker making k calls per input and a reducer reading them, as a trace records it."""
    inputs = [i for i, k in enumerate(notes_per_input) for _ in range(k)]
    firsts = [sum(notes_per_input[:i]) for i in range(len(notes_per_input))]
    return AppGraph(name="mr", num_inputs=len(notes_per_input), nodes=[
        LLMNode(name="note", model="m", input_tokens=[5] * len(inputs), max_tokens=4, inputs=inputs),
        LLMNode(name="reduce", model="m", input_tokens=[5] * len(notes_per_input), max_tokens=4,
                inputs=list(range(len(notes_per_input))), depends_on=["note"],
                upstream_requests={"note": [list(range(f, f + k)) for f, k in zip(firsts, notes_per_input)]}),
    ])


def test_an_input_past_a_node_makes_its_count_final_and_the_total_drops_to_what_came() -> None:
    graph = _map_reduce([4, 4])  # the trace saw 4 notes per input; the real inputs make 2 and 3
    published: list[dict[str, int]] = []
    progress = InputProgress(graph, published.append)
    assert progress.expected() == {"note": 8, "reduce": 2}
    for _ in range(2):
        progress.call("a", "note")
    assert progress.expected()["note"] == 8  # input a might still make 2 more notes
    progress.call("a", "reduce")  # a moved past the note-taker: its 2 notes are all
    assert progress.expected()["note"] == 6 and published[-1] == {"note": 6}
    for _ in range(3):
        progress.call("b", "note")
    progress.input_done("b")  # b ended without reducing (its reduce failed): every count of it is final
    assert progress.expected() == {"note": 5, "reduce": 1}


def test_more_calls_than_traced_raise_the_count_and_unstarted_inputs_keep_the_average() -> None:
    graph = _map_reduce([2, 2, 2])
    progress = InputProgress(graph, lambda counts: None)
    for _ in range(5):
        progress.call("a", "note")
    assert progress.expected()["note"] == 5 + 2 + 2
    progress.call("b", "note")
    progress.call("c", "note")
    assert progress.expected()["note"] == 5 + 2 + 2  # b and c are the inputs the average stood for
    progress.call("d", "note")  # a fourth input, beyond the three the graph was scaled to
    assert progress.expected()["note"] == 5 + 2 + 2 + 2


def test_nodes_of_one_loop_do_not_finalise_each_other() -> None:
    graph = AppGraph(name="loop", num_inputs=1, nodes=[
        LLMNode(name="writer", model="m", input_tokens=[5, 5], max_tokens=4, inputs=[0, 0], depends_on=["critic"],
                upstream_requests={"critic": [[], [0]], "writer": [[], [0]]}),
        LLMNode(name="critic", model="m", input_tokens=[5, 5], max_tokens=4, inputs=[0, 0], depends_on=["writer"],
                upstream_requests={"writer": [[0], [1]]}),
    ])
    progress = InputProgress(graph, lambda counts: None)
    progress.call("a", "writer")
    progress.call("a", "critic")  # the writer may run again: its count is not final
    assert progress.expected() == {"writer": 2, "critic": 2}
    progress.input_done("a")
    assert progress.expected() == {"writer": 1, "critic": 1}
